"""Tenants, API keys and bearer tokens: who is calling, for which tenant, with which scope.

Keys look like `dk_<id>_<secret>`. The id finds the row; only a SHA-256 of the secret
is stored, so a leaked database does not leak keys. Scopes are ordered: `client`
sends turns and reads its tenant's conversations, `agent` also handles handoffs,
`admin` also manages its tenant's keys, reads the knowledge base and erases. `operator` is the
deployment's, not a tenant's: what it may do reaches every tenant (writing the knowledge base every
tenant's bot answers from, decoding any tenant's payloads), so only the `default` tenant has operators,
and only the bootstrap key, another operator or the CLI (which holds the store itself) makes one.

A key or token without an end user belongs to the integrator's server: it speaks for its whole tenant.
End users reach the bot with end-user tokens (`dialogue.security.tokens`): the `client` scope, and only the
conversations that belong to them.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from dialogue.model.contracts import USER_PATTERN, Scope
from dialogue.platform.db import ApiKey, AuditEntry

SCOPES: tuple[Scope, ...] = ("client", "agent", "admin", "operator")
TENANT_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
DEFAULT_TENANT = "default"
OPERATOR_TENANT = DEFAULT_TENANT
"""The only tenant with operators: an operator's reach is the deployment's, so a key naming another tenant
would only suggest a bound that does not hold."""
_KEY = re.compile(r"^dk_([a-f0-9]{12})_([A-Za-z0-9_-]{20,100})$")
# Column sizes: PostgreSQL refuses longer values where SQLite would keep them.
MAX_KEY_NAME = 200
MAX_ACTOR = 200
MAX_TARGET = 300


@dataclass(frozen=True)
class Principal:
    """The caller: its tenant, its scope and what identifies it in audit entries."""

    tenant: str
    scope: Scope
    subject: str
    user: str | None = None
    """The verified end user calling (an end-user token, or an identity provider's token for one): scope
    `client`, and only their own conversations. None: a server-side key or token, trusted with its whole
    tenant (the integrator's server speaks for its tenant and its users)."""

    def allows(self, needed: Scope) -> bool:
        return SCOPES.index(self.scope) >= SCOPES.index(needed)

    def may_use(self, owner: str | None) -> bool:
        """Whether the caller may use a conversation that belongs to `owner` (its end user, or None)."""
        return self.user is None or self.user == owner


def end_user(tenant: str, user: str) -> Principal:
    """An end user of `tenant`, verified by a token: always the `client` scope, never more."""
    if re.match(USER_PATTERN, user) is None:
        raise InvalidCredentials("the end user's id is not valid")
    return Principal(tenant=tenant, scope="client", subject=f"user:{tenant}/{user}", user=user)


def scope_refusal(tenant: str, scope: Scope) -> str | None:
    """Why a key or token of `tenant` may not have `scope`; None when it may."""
    if scope == "operator" and tenant != OPERATOR_TENANT:
        return f"the operator scope belongs to the {OPERATOR_TENANT!r} tenant only"
    return None


class InvalidCredentials(Exception):
    """The key or token is unknown, expired, revoked or malformed (the message says which, for logs)."""


def valid_tenant(tenant: str) -> bool:
    return re.match(TENANT_PATTERN, tenant) is not None


def create_key(
    engine: Engine,
    *,
    tenant: str,
    scope: Scope,
    name: str | None = None,
    expires_at: datetime | None = None,
) -> tuple[ApiKey, str]:
    """A new key; returns its row and the key itself, which is never shown again."""
    if not valid_tenant(tenant):
        raise ValueError(f"tenant must match {TENANT_PATTERN}")
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}")
    refusal = scope_refusal(tenant, scope)
    if refusal is not None:
        raise ValueError(refusal)
    if name is not None and len(name) > MAX_KEY_NAME:
        raise ValueError(f"name must be at most {MAX_KEY_NAME} characters")
    key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    row = ApiKey(
        id=key_id,
        tenant=tenant,
        scope=scope,
        name=name,
        secret_hash=_hash(secret),
        created_at=datetime.now(UTC),
        expires_at=expires_at,
    )
    with Session(engine) as session:
        session.add(row)
        session.commit()
        session.refresh(row)
    return row, f"dk_{key_id}_{secret}"


def authenticate_key(engine: Engine, token: str, *, now: datetime | None = None) -> Principal:
    found = _KEY.match(token)
    if found is None:
        raise InvalidCredentials("not an API key")
    key_id, secret = found.groups()
    with Session(engine) as session:
        row = session.get(ApiKey, key_id)
    # Compare even when the row is missing, so timing does not tell which key ids exist.
    expected = row.secret_hash if row is not None else _hash("")
    if not hmac.compare_digest(expected, _hash(secret)) or row is None:
        raise InvalidCredentials("unknown key")
    if row.revoked_at is not None:
        raise InvalidCredentials("revoked key")
    if row.expires_at is not None and row.expires_at <= (now or datetime.now(UTC)):
        raise InvalidCredentials("expired key")
    return Principal(tenant=row.tenant, scope=cast(Scope, row.scope), subject=f"key:{row.id}")


def revoke_key(
    engine: Engine, key_id: str, *, tenant: str | None = None, up_to: Scope | None = None
) -> ApiKey | None:
    """Revoke a key (of `tenant` only, and of no scope above `up_to`, when given); None when there is no
    such key."""
    with Session(engine) as session:
        row = session.get(ApiKey, key_id)
        if row is None or (tenant is not None and row.tenant != tenant):
            return None
        if up_to is not None and SCOPES.index(cast(Scope, row.scope)) > SCOPES.index(up_to):
            return None  # a tenant's admin cannot lock the deployment's operators out
        if row.revoked_at is None:
            row.revoked_at = datetime.now(UTC)
            session.add(row)
            session.commit()
            session.refresh(row)
        return row


def list_keys(engine: Engine, *, tenant: str | None = None) -> Sequence[ApiKey]:
    with Session(engine) as session:
        query = select(ApiKey).order_by(col(ApiKey.tenant), col(ApiKey.created_at))
        if tenant is not None:
            query = query.where(col(ApiKey.tenant) == tenant)
        return session.exec(query).all()


def audit(engine: Engine, *, tenant: str, actor: str, action: str, target: str, **detail: Any) -> None:
    """Record what was done, by whom, to what; callers pass no content, only ids and counts."""
    with Session(engine) as session:
        session.add(
            AuditEntry(
                at=datetime.now(UTC),
                tenant=tenant,
                # A token's subject is the caller's to choose: keep the entry rather than fail the action.
                actor=actor[:MAX_ACTOR],
                action=action,
                target=target[:MAX_TARGET],
                detail=detail,
            )
        )
        session.commit()


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()
