"""Approvals: a person (agent scope) or the user decides on a tool call the bot's agent wants to make, as the
tool's `approval` says. A `user` approval is the conversation's end user's alone (their end-user token) when
it has one; in a conversation without one, any key of the tenant decides it, as its server speaks for it. Each decision is the `approve` update of the
conversation's workflow; once every call the agent waits for is decided, the agent goes on and the last
decision's answer carries what it then said."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from api.deps import PoliciesDep, SettingsDep, TemporalClientDep
from api.errors import WORKFLOW_UPDATE, responses
from api.routes.conversations import ConversationIdPath, IdempotencyKey, OwnerPrincipal, execute_update
from dialogue.model.api_models import ApprovalCreate
from dialogue.model.contracts import ApprovalReply, ApprovalRequest, Updates
from dialogue.platform.temporal import conversation_key

router = APIRouter(prefix="/conversations", tags=["approvals"])

CallIdPath = Annotated[str, Path(max_length=200, description="The tool call's id, as the reply named it.")]


@router.post(
    "/{conversation_id}/approvals/{call_id}",
    responses=responses("forbidden", "approval_not_found", "approval_decided", *WORKFLOW_UPDATE),
)
async def decide_approval(
    conversation_id: ConversationIdPath,
    call_id: CallIdPath,
    body: ApprovalCreate,
    settings: SettingsDep,
    temporal: TemporalClientDep,
    principal: OwnerPrincipal,
    policies: PoliciesDep,
    idempotency_key: IdempotencyKey = None,
) -> ApprovalReply:
    """Approve or deny a tool call that waits (`agent` approvals need the agent scope; `user` approvals of a
    conversation with an end user need their token). 404 when no such call
    waits, 409 when it is decided already. Deciding the last call the agent waits for answers with what the
    agent said when it went on (`reply`); before that, with the calls still pending."""
    key = conversation_key(principal.tenant, conversation_id)
    flags = policies.evaluate(key)
    note = policies.privacy(key).for_storage(body.note, enabled=flags["redaction"]) if body.note else None
    decision = ApprovalRequest(
        call_id=call_id,
        approve=body.approve,
        note=note,
        by=principal.subject,
        as_agent=principal.allows("agent"),
        user=principal.user,  # the workflow's validator holds a `user` approval to the conversation's user
    )
    reply: ApprovalReply = await execute_update(
        temporal,
        settings,
        principal,
        conversation_id,
        Updates.APPROVE,
        decision,
        idempotency_key,
        ApprovalReply,
    )
    return reply
