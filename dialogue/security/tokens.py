"""Bearer tokens (JWT): an identity provider's, as an alternative to API keys, and the end-user tokens the
API mints itself.

An identity provider's: HS256 with a shared secret, or RS256/ES256 with the provider's public keys (a JWKS
file or URL). The tenant and scope come from claims (`tenant` and `scope` by default); a scope claim may
list several scopes separated by spaces (OAuth style), the highest one the tenant may hold counts
(`operator` only for the `default` tenant: see `dialogue.security.identity`). A token whose end-user claim
(`end_user` by default) is `true` is an end user's: its subject is the user, its scope `client`.

End-user tokens (`EndUserTokens`): the integrator's server asks for one with its key
(`POST /v1/end-user-tokens`) and hands it to its user's browser or app; it names the tenant and the user,
lives an hour at most, and is signed (HS256) with a secret only the API holds, under an audience of its own,
so that no other token signed with that secret passes for one. They are `deu_` and a JWT.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt

from dialogue.platform.settings import Settings
from dialogue.security.identity import (
    SCOPES,
    InvalidCredentials,
    Principal,
    Scope,
    end_user,
    scope_refusal,
    valid_tenant,
)

ASYMMETRIC = ["RS256", "ES256"]
END_USER_PREFIX = "deu_"
"""What an end-user token starts with: told apart from keys (`dk_`) and an identity provider's JWTs."""
END_USER_AUDIENCE = "dialogue:end-user"
END_USER_ISSUER = "dialogue"
MAX_END_USER_TTL_SECONDS = 3600
"""An end-user token lives an hour at most: it is not revoked one by one, it expires."""


class TokenVerifier:
    def __init__(self, settings: Settings) -> None:
        if (settings.jwt_jwks_url or settings.jwt_jwks_file) and not settings.jwt_audience:
            # A provider's keys sign tokens for all its applications: only the audience says "for us".
            raise ValueError("DIALOGUE_JWT_AUDIENCE must be set with a JWKS (file or URL)")
        self._settings = settings
        self._jwks_client = jwt.PyJWKClient(settings.jwt_jwks_url) if settings.jwt_jwks_url else None
        self._jwks_file = _load_jwks(settings.jwt_jwks_file) if settings.jwt_jwks_file else None

    @staticmethod
    def configured(settings: Settings) -> bool:
        return bool(settings.jwt_hs256_secret or settings.jwt_jwks_url or settings.jwt_jwks_file)

    @property
    def fetches_keys(self) -> bool:
        """Whether verifying a token may fetch the provider's signing keys (a JWKS URL): it may block."""
        return self._jwks_client is not None

    def verify(self, token: str) -> Principal:
        try:
            claims = jwt.decode(
                token,
                key=self._key(token),
                algorithms=["HS256"] if self._settings.jwt_hs256_secret else ASYMMETRIC,
                audience=self._settings.jwt_audience,
                issuer=self._settings.jwt_issuer,
                options={"require": ["exp"], "verify_aud": self._settings.jwt_audience is not None},
            )
        except jwt.PyJWTError as err:
            raise InvalidCredentials(f"token rejected: {type(err).__name__}") from err
        tenant = claims.get(self._settings.jwt_tenant_claim)
        if not isinstance(tenant, str) or not valid_tenant(tenant):
            raise InvalidCredentials("token has no valid tenant claim")
        if claims.get(self._settings.jwt_end_user_claim) is True:
            subject = claims.get("sub")
            if not isinstance(subject, str):
                raise InvalidCredentials("an end user's token has no subject")
            return end_user(tenant, subject)
        scope = _highest_scope(claims.get(self._settings.jwt_scope_claim), tenant)
        if scope is None:
            raise InvalidCredentials("token has no known scope")
        return Principal(tenant=tenant, scope=scope, subject=f"token:{claims.get('sub', '?')}")

    def _key(self, token: str) -> Any:
        if self._settings.jwt_hs256_secret:
            return self._settings.jwt_hs256_secret.get_secret_value()
        if self._jwks_client is not None:
            return self._jwks_client.get_signing_key_from_jwt(token).key
        assert self._jwks_file is not None
        kid = jwt.get_unverified_header(token).get("kid")
        keys = [key for key in self._jwks_file.keys if kid is None or key.key_id == kid]
        if not keys:
            raise jwt.InvalidKeyError(f"no key {kid!r} in the JWKS file")
        return keys[0].key


def _highest_scope(claim: object, tenant: str) -> Scope | None:
    named = claim.split() if isinstance(claim, str) else claim if isinstance(claim, list) else []
    known = [scope for scope in SCOPES if scope in named and scope_refusal(tenant, scope) is None]
    return known[-1] if known else None


def _load_jwks(path: Path) -> jwt.PyJWKSet:
    return jwt.PyJWKSet.from_dict(json.loads(path.read_text()))


class EndUserTokens:
    """Mints and verifies end-user tokens with the API's own secret (`Settings.end_user_token_secret`)."""

    def __init__(self, secret: str) -> None:
        self._secret = secret

    def mint(self, tenant: str, user: str, *, ttl_seconds: int, by: str) -> tuple[str, datetime]:
        """A token for `user` of `tenant`, living `ttl_seconds` (an hour at most); `by` is the subject of the
        key that asked, kept in the token for audit. Returns the token and when it expires."""
        if not 0 < ttl_seconds <= MAX_END_USER_TTL_SECONDS:
            raise ValueError(f"ttl_seconds must be between 1 and {MAX_END_USER_TTL_SECONDS}")
        end_user(tenant, user)  # a valid user id, or InvalidCredentials
        now = datetime.now(UTC).replace(microsecond=0)
        expires = now + timedelta(seconds=ttl_seconds)
        claims = {
            "iss": END_USER_ISSUER,
            "aud": END_USER_AUDIENCE,
            "sub": user,
            "tenant": tenant,
            "by": by,
            "iat": now,
            "exp": expires,
        }
        return END_USER_PREFIX + jwt.encode(claims, self._secret, algorithm="HS256"), expires

    def verify(self, token: str) -> Principal:
        """The end user a token names; InvalidCredentials when it is expired, tampered with, or not one."""
        if not token.startswith(END_USER_PREFIX):
            raise InvalidCredentials("not an end-user token")
        try:
            claims = jwt.decode(
                token.removeprefix(END_USER_PREFIX),
                key=self._secret,
                algorithms=["HS256"],
                audience=END_USER_AUDIENCE,
                issuer=END_USER_ISSUER,
                options={"require": ["exp", "iat", "sub", "aud", "iss"]},
            )
        except jwt.PyJWTError as err:
            raise InvalidCredentials(f"end-user token rejected: {type(err).__name__}") from err
        # Minted with a longer life than allowed: not ours (or the secret leaked); refused either way.
        if claims["exp"] - claims["iat"] > MAX_END_USER_TTL_SECONDS:
            raise InvalidCredentials("end-user token lives too long")
        tenant, user = claims.get("tenant"), claims["sub"]
        if not isinstance(tenant, str) or not valid_tenant(tenant) or not isinstance(user, str):
            raise InvalidCredentials("end-user token names no valid tenant or user")
        return end_user(tenant, user)
