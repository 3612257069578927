"""Dependencies the routes declare: settings, the store's engine, the Temporal client, the caller.

The caller is identified by `Authorization: Bearer …`: the bootstrap key from settings
(operator, of the `default` tenant), an API key from the store, an end-user token the API minted
(`deu_…`: an end user, client scope, their own conversations only), or a JWT when a verifier
is configured. Each key or token then draws from its own rate-limit bucket. Routes ask for
the scope they need: `ClientPrincipal`, `AgentPrincipal`, `AdminPrincipal` or `OperatorPrincipal`.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from temporalio.client import Client

from api.errors import ApiError
from api.limits import RateLimiter
from api.policies import BotPolicies
from dialogue.platform.releases import ReleaseCache
from dialogue.platform.settings import Settings
from dialogue.security.identity import DEFAULT_TENANT, InvalidCredentials, Principal, Scope, authenticate_key
from dialogue.security.tokens import END_USER_PREFIX, EndUserTokens, TokenVerifier

log = logging.getLogger("dialogue.api")
BOOTSTRAP_SUBJECT = "key:bootstrap"

# The dependencies that read the app's state are coroutines: FastAPI runs a plain function on a worker
# thread, a trip that cost more than the read (a turn took seven of them; bench/flood.py --profile).


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


async def get_temporal(request: Request) -> Client:
    client: Client = request.app.state.temporal
    return client


async def get_releases(request: Request) -> ReleaseCache:
    releases: ReleaseCache = request.app.state.releases
    return releases


async def get_policies(request: Request) -> BotPolicies:
    policies: BotPolicies = request.app.state.policies
    return policies


def get_principal(request: Request) -> Principal:
    """Who is calling (401 otherwise), once within its rate limit (429 otherwise).

    A plain function: FastAPI runs it on a worker thread, where the key lookup may block. A turn's caller
    was authenticated before its body was read (`api/limits.py`, `TurnAdmission`; on the event loop when
    `authentication_blocks` says it does not wait): the principal found then is kept on the request's
    state and given here, so the rate limit is drawn from once.
    """
    known: Principal | None = getattr(request.state, "principal", None)
    if known is not None:
        return known
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ApiError(
            "unauthenticated",
            "send an API key or token as 'Authorization: Bearer <key>'",
            {"WWW-Authenticate": "Bearer"},
        )
    state = request.app.state
    verifier: TokenVerifier | None = state.token_verifier
    try:
        if hmac.compare_digest(token.encode(), state.api_key.encode()):
            principal = Principal(tenant=DEFAULT_TENANT, scope="operator", subject=BOOTSTRAP_SUBJECT)
        elif token.startswith("dk_"):
            principal = _authenticate_key(state, token)
        elif token.startswith(END_USER_PREFIX):
            end_users: EndUserTokens | None = state.end_user_tokens
            if end_users is None:
                raise InvalidCredentials("end-user tokens are not configured")
            principal = end_users.verify(token)
        elif verifier is not None and token.count(".") == 2:
            principal = verifier.verify(token)
        else:
            raise InvalidCredentials("neither a key nor an accepted token")
    except InvalidCredentials as err:
        log.info("refused credentials: %s", err)  # the reason stays in the log, not in the answer
        raise ApiError(
            "invalid_credentials", "the API key or token is not valid", {"WWW-Authenticate": "Bearer"}
        ) from None
    # An end user's requests count in their own bucket (their subject names the tenant and the user), at
    # the end users' rate; a key's in the key's.
    end_user = principal.user is not None
    limiter: RateLimiter = state.end_user_rate_limiter if end_user else state.rate_limiter
    wait = limiter.take(principal.subject)
    if wait > 0:
        whose = "this user" if end_user else "this key"
        raise ApiError(
            "rate_limited", f"too many requests for {whose}; slow down", {"Retry-After": str(wait)}
        )
    request.state.tenant = principal.tenant  # for the request's log line (api/request_telemetry.py)
    request.state.principal = principal
    return principal


def authentication_blocks(request: Request) -> bool:
    """Whether finding the caller may wait on I/O, and so belongs on a worker thread: an API key is looked
    up in the store, and a JWT's signing keys may be fetched from its identity provider. The bootstrap key,
    an end-user token, a JWT checked against a secret or a key file, and a missing or malformed credential
    are checked in memory, in microseconds."""
    token = request.headers.get("authorization", "").partition(" ")[2].strip()
    state = request.app.state
    if token.startswith("dk_"):
        # The bootstrap key looks like one too (`Settings.resolve_api_key`), and is compared in memory.
        return not hmac.compare_digest(token.encode(), state.api_key.encode())
    verifier: TokenVerifier | None = state.token_verifier
    return verifier is not None and verifier.fetches_keys and token.count(".") == 2


KEY_GRACE_SECONDS = 15 * 60
"""While the store cannot be read, a key it confirmed this recently is still accepted: the store is not a
hard dependency of a turn. A key revoked during the outage is refused once the store answers again."""


def _authenticate_key(state: Any, token: str) -> Principal:
    """An API key from the store; during a store outage, a key the store confirmed lately (see above)."""
    digest = hashlib.sha256(token.encode()).digest()  # the keys themselves are not kept in memory
    confirmed: dict[bytes, tuple[Principal, float]] = state.confirmed_keys
    try:
        principal = authenticate_key(state.engine, token)
    except SQLAlchemyError:
        known = confirmed.get(digest)
        if known is None or time.monotonic() - known[1] > KEY_GRACE_SECONDS:
            raise
        log.warning(
            "store unavailable: accepting %s, confirmed %.0f s ago",
            known[0].subject,
            time.monotonic() - known[1],
        )
        return known[0]
    except InvalidCredentials:
        confirmed.pop(digest, None)
        raise
    confirmed[digest] = (principal, time.monotonic())
    return principal


async def caller(request: Request) -> Principal:
    """`get_principal` on a worker thread only when finding the caller may wait on I/O
    (`authentication_blocks`); a turn's caller, found by its admission, is taken as it is."""
    known: Principal | None = getattr(request.state, "principal", None)
    if known is not None:
        return known
    if authentication_blocks(request):
        return await run_in_threadpool(get_principal, request)
    return get_principal(request)


def require(scope: Scope) -> object:
    """A dependency giving the caller if its scope includes `scope` (403 otherwise)."""

    async def allowed(principal: Annotated[Principal, Depends(caller)]) -> Principal:
        if not principal.allows(scope):
            raise ApiError("forbidden", f"this needs the {scope} scope; the key has {principal.scope}")
        return principal

    return Depends(allowed)


LOOPBACK = {"127.0.0.1", "::1"}
FORWARDING_HEADERS = ("forwarded", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-real-ip")
"""Headers a reverse proxy adds: with any of them, the loopback peer is the proxy, not the visitor."""


def local_development(request: Request) -> bool:
    """A development stack (an explicit `DIALOGUE_ENVIRONMENT=development`) that listens on loopback only,
    asked from the same machine by its loopback name, with no proxy in between: the one place where
    conveniences that skip or reveal the key (the codec, the pre-filled key) are allowed.

    The name matters too: a web page whose own host name was re-pointed at 127.0.0.1 (DNS
    rebinding) reaches this port from loopback, but under its own name in `Host`. A reverse proxy on
    the same machine comes from loopback as well, and may keep the `Host` it was given: a forwarding
    header says a proxy speaks for someone else, so any of them refuses (a proxy that adds none is
    still a proxy: that is why development is never the default)."""
    settings: Settings = request.app.state.settings
    local_only = settings.api_host in LOOPBACK or settings.api_host == "localhost"
    return bool(
        settings.environment == "development"
        and local_only
        and request.client
        and request.client.host in LOOPBACK
        and request.url.hostname in LOOPBACK | {"localhost"}
        and not any(name in request.headers for name in FORWARDING_HEADERS)
    )


async def authorize_codec(request: Request) -> None:
    """Who may decrypt payloads through the codec server: a key or token with the operator scope.

    One key list seals every tenant's payloads and a payload names no tenant, so opening them is for
    the deployment's operators, not a tenant's admin (who would read every other tenant's conversations).
    In local development (see `local_development`) callers need none: the embedded Web UI has no login
    and so sends no credentials. Elsewhere the UI must pass its users' tokens (Temporal UI auth with
    "pass access token" to the codec endpoint).
    """
    if local_development(request):
        return
    principal = await run_in_threadpool(get_principal, request)
    if not principal.allows("operator"):
        raise ApiError("forbidden", "decoding payloads needs the operator scope")


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]
TemporalClientDep = Annotated[Client, Depends(get_temporal)]
PoliciesDep = Annotated[BotPolicies, Depends(get_policies)]
ReleasesDep = Annotated[ReleaseCache, Depends(get_releases)]
ClientPrincipal = Annotated[Principal, require("client")]
AgentPrincipal = Annotated[Principal, require("agent")]
AdminPrincipal = Annotated[Principal, require("admin")]
OperatorPrincipal = Annotated[Principal, require("operator")]
