"""`/v1/deliveries`: the messages sent to messaging platforms, the dead letters among them, and their resend.

A delivery the platform refused for good, or that failed through all its attempts, is a dead letter: its
conversation went on without it. An admin sees them here and, once the cause is fixed (a token renewed, the
bot invited to the channel), resends one."""

from __future__ import annotations

import contextlib
import hashlib
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, status
from starlette.concurrency import run_in_threadpool
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

from api.deps import AdminPrincipal, EngineDep, SettingsDep, TemporalClientDep
from api.errors import ApiError, responses, temporal_errors
from dialogue.model.api_models import DeliveryPublic
from dialogue.model.contracts import Delivery
from dialogue.platform.channels import ledger
from dialogue.platform.db import ChannelDelivery

router = APIRouter(prefix="/deliveries", tags=["channels"])
RESEND_WORKFLOW = "ResendWorkflow"
DeliveryIdPath = Annotated[str, Path(max_length=300, description="The delivery's id.")]


@router.get("", responses=responses("forbidden"))
async def read_deliveries(
    engine: EngineDep,
    principal: AdminPrincipal,
    status: Literal["sending", "sent", "dead"] | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=100_000)] = 0,
) -> list[DeliveryPublic]:
    """The tenant's deliveries, the latest first; `status=dead`: the dead letters."""
    rows = await run_in_threadpool(
        ledger.listed, engine, principal.tenant, status, limit=limit, offset=offset
    )
    return [_public(row) for row in rows]


@router.post(
    "/{delivery_id:path}/resend",
    status_code=status.HTTP_202_ACCEPTED,
    responses=responses("forbidden", "delivery_not_found", "delivery_not_dead", "temporal_unavailable"),
)
async def resend_delivery(
    delivery_id: DeliveryIdPath,
    engine: EngineDep,
    settings: SettingsDep,
    temporal: TemporalClientDep,
    principal: AdminPrincipal,
) -> DeliveryPublic:
    """Send a dead letter again (with the retries of any delivery); the list shows how it went."""
    row = await run_in_threadpool(ledger.get, engine, delivery_id)
    if row is None or row.tenant != principal.tenant:
        raise ApiError("delivery_not_found", f"no delivery {delivery_id!r}")
    if row.status != "dead":
        raise ApiError("delivery_not_dead", f"delivery {delivery_id!r} is {row.status}, not a dead letter")
    delivery = Delivery.model_validate_json(row.delivery).model_copy(update={"resend": True})
    # One resend per dead letter (its attempts so far name it): a double click starts it once.
    digest = hashlib.sha256(delivery_id.encode()).hexdigest()[:32]
    async with temporal_errors(row.conversation_id, temporal=temporal, key=row.conversation_id):
        with contextlib.suppress(WorkflowAlreadyStartedError):  # resent already: once is enough
            await temporal.start_workflow(
                RESEND_WORKFLOW,
                delivery,
                id=f"resend-{digest}-{row.attempts}",
                task_queue=settings.task_queue,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            )
    return _public(row)


def _public(row: ChannelDelivery) -> DeliveryPublic:
    delivery = Delivery.model_validate_json(row.delivery)
    return DeliveryPublic(
        id=row.id,
        conversation_id=row.conversation_id.split("/", 1)[-1],
        channel=row.channel,
        status=row.status,
        attempts=row.attempts,
        last_error=row.last_error,
        platform_id=row.platform_id,
        text=delivery.text,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )
