"""Bearer tokens (JWT) from an identity provider, as an alternative to API keys.

HS256 with a shared secret, or RS256/ES256 with the provider's public keys (a JWKS file or
URL). The tenant and scope come from claims (`tenant` and `scope` by default); a scope
claim may list several scopes separated by spaces (OAuth style), the highest one the tenant may
hold counts (`operator` only for the `default` tenant: see `dialogue.security.identity`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jwt

from dialogue.platform.settings import Settings
from dialogue.security.identity import (
    SCOPES,
    InvalidCredentials,
    Principal,
    Scope,
    scope_refusal,
    valid_tenant,
)

ASYMMETRIC = ["RS256", "ES256"]


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
