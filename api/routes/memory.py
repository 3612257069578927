"""`/v1/users/{user}/memory`: what the bot remembers of one end user across conversations, and their say in
it. Nothing is remembered until the user consents (`PUT …/memory/consent`); withdrawing consent forgets
everything at once. The user sees, corrects and deletes each item; the integrator's server may too.

A server's key asks about any of its users; an end user's token about its own user only, as for the rest
of `/v1/users/{user}`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Path, Response, status
from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool

from api.deps import ClientPrincipal, EngineDep, PoliciesDep
from api.errors import ApiError, responses
from api.routes.user_access import UserPath, refuse_another_user
from dialogue.model.api_models import (
    MEMORY_KIND_PATTERN,
    MemoryConsentPublic,
    MemoryConsentUpdate,
    MemoryItemPublic,
    MemoryItemUpdate,
    UserMemory,
)
from dialogue.platform import memory
from dialogue.platform.db import MemoryConsent, MemoryItem
from dialogue.platform.temporal import conversation_key
from dialogue.security.identity import Principal

router = APIRouter(prefix="/users", tags=["memory"])

KindPath = Annotated[
    str,
    Path(pattern=MEMORY_KIND_PATTERN, description="What the item is: `name`, `city`, `language`, `order`…"),
]


@router.get("/{user}/memory", responses=responses("forbidden"))
async def read_memory(user: UserPath, engine: EngineDep, principal: ClientPrincipal) -> UserMemory:
    """Everything remembered of the end user, each item with where it was learnt, and their consent."""
    refuse_another_user(principal, user)
    return await run_in_threadpool(user_memory, engine, principal.tenant, user)


@router.put("/{user}/memory/consent", responses=responses("forbidden"))
async def set_memory_consent(
    user: UserPath, body: MemoryConsentUpdate, engine: EngineDep, principal: ClientPrincipal
) -> MemoryConsentPublic:
    """The user's answer: `true` lets the bot remember what they tell it across conversations; `false`
    forgets everything remembered at once and stops remembering."""
    refuse_another_user(principal, user)
    row, forgotten = await run_in_threadpool(
        lambda: memory.set_consent(
            engine,
            tenant=principal.tenant,
            user=user,
            consented=body.consented,
            by=principal.subject,
            at=datetime.now(UTC),
        )
    )
    return consent_public(row).model_copy(update={"forgotten": forgotten})


@router.get("/{user}/memory/items/{kind}", responses=responses("forbidden", "memory_item_not_found"))
async def read_memory_item(
    user: UserPath, kind: KindPath, engine: EngineDep, principal: ClientPrincipal
) -> MemoryItemPublic:
    refuse_another_user(principal, user)
    row = await run_in_threadpool(lambda: memory.item(engine, tenant=principal.tenant, user=user, kind=kind))
    if row is None:
        raise _not_remembered(user, kind)
    return item_public(principal, row)


@router.put("/{user}/memory/items/{kind}", responses=responses("forbidden", "memory_not_consented"))
async def correct_memory_item(
    user: UserPath,
    kind: KindPath,
    body: MemoryItemUpdate,
    engine: EngineDep,
    principal: ClientPrincipal,
    policies: PoliciesDep,
) -> MemoryItemPublic:
    """Correct an item, or add one (source `api`); redacted as a turn's text is. 409 while the user has not
    consented: nothing is remembered of them then, whoever asks."""
    refuse_another_user(principal, user)
    key = conversation_key(principal.tenant, user)  # the policy of the bot a conversation of theirs gets
    privacy = policies.privacy(key)
    value = privacy.for_storage(body.value, enabled=policies.enabled("redaction", key))
    now = datetime.now(UTC)
    days = privacy.retention_days
    row = await run_in_threadpool(
        lambda: memory.remember(
            engine,
            tenant=principal.tenant,
            user=user,
            kind=kind,
            value=value,
            source="api",
            at=now,
            expires_at=now + timedelta(days=days) if days is not None else None,
        )
    )
    if row is None:
        raise ApiError("memory_not_consented", f"user {user!r} has not consented to being remembered")
    return item_public(principal, row)


@router.delete(
    "/{user}/memory/items/{kind}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=responses("forbidden", "memory_item_not_found"),
)
async def forget_memory_item(
    user: UserPath, kind: KindPath, engine: EngineDep, principal: ClientPrincipal
) -> Response:
    """Forget one item, everywhere: the next reply no longer uses it."""
    refuse_another_user(principal, user)
    removed = await run_in_threadpool(
        lambda: memory.forget(engine, tenant=principal.tenant, user=user, kinds=[kind])
    )
    if not removed:
        raise _not_remembered(user, kind)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def user_memory(engine: Engine, tenant: str, user: str) -> UserMemory:
    """What `GET …/memory` and the user's export give of their memory."""
    consent = memory.consent(engine, tenant=tenant, user=user)
    prefix = len(conversation_key(tenant, ""))
    return UserMemory(
        user=user,
        consent=consent_public(consent) if consent is not None else MemoryConsentPublic(consented=None),
        items=[_public(row, prefix) for row in memory.items(engine, tenant=tenant, user=user)],
    )


def consent_public(row: MemoryConsent) -> MemoryConsentPublic:
    return MemoryConsentPublic(consented=row.consented, at=row.at, by=row.by)


def item_public(principal: Principal, row: MemoryItem) -> MemoryItemPublic:
    return _public(row, len(conversation_key(principal.tenant, "")))


def _public(row: MemoryItem, prefix: int) -> MemoryItemPublic:
    # The conversation under the id its caller knows it by, without the tenant's prefix.
    said_in = row.conversation_id[prefix:] if row.conversation_id else None
    return MemoryItemPublic.model_validate(
        row.model_dump() | {"conversation_id": said_in}, from_attributes=False
    )


def _not_remembered(user: str, kind: str) -> ApiError:
    return ApiError("memory_item_not_found", f"nothing of kind {kind!r} is remembered of user {user!r}")
