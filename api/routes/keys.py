"""`/v1/keys`: an admin manages its own tenant's API keys. A key is shown once, when it is created.

No caller grants or revokes a scope above its own: a tenant's admin makes no operator (nor locks one out).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Path, Response, status
from starlette.concurrency import run_in_threadpool

from api.deps import AdminPrincipal, EngineDep
from api.errors import ApiError, responses
from dialogue.model.api_models import KeyCreate, KeyCreated, KeyPublic
from dialogue.security.identity import audit, create_key, list_keys, revoke_key

router = APIRouter(prefix="/keys", tags=["keys"])


@router.post("", status_code=status.HTTP_201_CREATED, responses=responses("forbidden"))
async def create(body: KeyCreate, engine: EngineDep, principal: AdminPrincipal) -> KeyCreated:
    """A new key of the caller's tenant, of a scope no higher than the caller's."""
    if not principal.allows(body.scope):
        raise ApiError(
            "forbidden", f"a key with the {principal.scope} scope cannot grant the {body.scope} scope"
        )
    expires = datetime.now(UTC) + timedelta(days=body.expires_in_days) if body.expires_in_days else None
    try:
        row, key = await run_in_threadpool(
            create_key, engine, tenant=principal.tenant, scope=body.scope, name=body.name, expires_at=expires
        )
    except ValueError as err:  # a scope the tenant may not hold
        raise ApiError("forbidden", str(err)) from None
    await run_in_threadpool(
        audit, engine, tenant=principal.tenant, actor=principal.subject, action="key_create", target=row.id
    )
    return KeyCreated.model_validate(row.model_dump() | {"key": key})


@router.get("", responses=responses("forbidden"))
async def read(engine: EngineDep, principal: AdminPrincipal) -> list[KeyPublic]:
    """The tenant's keys (never their secrets)."""
    rows = await run_in_threadpool(list_keys, engine, tenant=principal.tenant)
    return [KeyPublic.model_validate(row, from_attributes=True) for row in rows]


@router.delete(
    "/{key_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=responses("forbidden", "key_not_found"),
)
async def revoke(
    key_id: Annotated[str, Path(max_length=32)], engine: EngineDep, principal: AdminPrincipal
) -> Response:
    """Revoke a key of the tenant (of a scope no higher than the caller's): refused from the next request on."""
    revoked = await run_in_threadpool(
        revoke_key, engine, key_id, tenant=principal.tenant, up_to=principal.scope
    )
    if revoked is None:
        raise ApiError("key_not_found", f"no key {key_id!r}")
    await run_in_threadpool(
        audit, engine, tenant=principal.tenant, actor=principal.subject, action="key_revoke", target=key_id
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)
