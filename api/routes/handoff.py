"""Human handoff: a person takes a conversation over, answers the user, and hands it back.

Each is an update of the conversation's workflow, run in order with the user's turns, so
the transcript keeps one order: the user's words, the bot's or the person's replies, and
where the conversation changed hands.
"""

from __future__ import annotations

from fastapi import APIRouter, status

from api.deps import AgentPrincipal, PoliciesDep, SettingsDep, TemporalClientDep
from api.errors import WORKFLOW_UPDATE, ApiError, responses
from api.routes.conversations import ConversationIdPath, IdempotencyKey, execute_update, require_flag
from dialogue.model.contracts import (
    AgentMessageReply,
    AgentMessageRequest,
    ConversationState,
    HandbackRequest,
    HandoffRequest,
    Updates,
)
from dialogue.platform.temporal import conversation_key

router = APIRouter(prefix="/conversations", tags=["handoff"])


@router.post(
    "/{conversation_id}/handoff", responses=responses("forbidden", "feature_disabled", *WORKFLOW_UPDATE)
)
async def hand_off(
    conversation_id: ConversationIdPath,
    body: HandoffRequest,
    settings: SettingsDep,
    temporal: TemporalClientDep,
    principal: AgentPrincipal,
    policies: PoliciesDep,
    idempotency_key: IdempotencyKey = None,
) -> ConversationState:
    """A person takes the conversation over: the bot stops answering; the user's turns wait for the person."""
    flags = require_flag(policies, principal, conversation_id, "handoff")
    reason = policies.privacy(conversation_key(principal.tenant, conversation_id)).for_storage(
        body.reason, enabled=flags["redaction"]
    )
    body = body.model_copy(update={"reason": reason})
    state: ConversationState = await execute_update(
        temporal,
        settings,
        principal,
        conversation_id,
        Updates.HANDOFF,
        body,
        idempotency_key,
        ConversationState,
    )
    return state


@router.post(
    "/{conversation_id}/agent-messages",
    status_code=status.HTTP_201_CREATED,
    responses=responses("forbidden", "feature_disabled", "invalid_turn", "not_handed_off", *WORKFLOW_UPDATE),
)
async def post_agent_message(
    conversation_id: ConversationIdPath,
    body: AgentMessageRequest,
    settings: SettingsDep,
    temporal: TemporalClientDep,
    principal: AgentPrincipal,
    policies: PoliciesDep,
    idempotency_key: IdempotencyKey = None,
) -> AgentMessageReply:
    """A person's reply to the user (409 unless the conversation is handed off): recorded in the
    transcript and sent to the conversation's event stream."""
    flags = require_flag(policies, principal, conversation_id, "handoff")
    if len(body.text) > settings.max_text_chars:
        raise ApiError("invalid_turn", f"text is longer than {settings.max_text_chars} characters")
    text = policies.privacy(conversation_key(principal.tenant, conversation_id)).for_storage(
        body.text, enabled=flags["redaction"]
    )
    body = body.model_copy(update={"text": text})
    reply: AgentMessageReply = await execute_update(
        temporal,
        settings,
        principal,
        conversation_id,
        Updates.AGENT_MESSAGE,
        body,
        idempotency_key,
        AgentMessageReply,
    )
    return reply


@router.post(
    "/{conversation_id}/handback",
    responses=responses("forbidden", "feature_disabled", "not_handed_off", *WORKFLOW_UPDATE),
)
async def hand_back(
    conversation_id: ConversationIdPath,
    body: HandbackRequest,
    settings: SettingsDep,
    temporal: TemporalClientDep,
    principal: AgentPrincipal,
    policies: PoliciesDep,
    idempotency_key: IdempotencyKey = None,
) -> ConversationState:
    """The bot answers the user's turns again."""
    # Off, a conversation a person held goes back to the bot by itself, at the user's next turn.
    require_flag(policies, principal, conversation_id, "handoff")
    state: ConversationState = await execute_update(
        temporal,
        settings,
        principal,
        conversation_id,
        Updates.HANDBACK,
        body,
        idempotency_key,
        ConversationState,
    )
    return state
