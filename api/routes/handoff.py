"""Human handoff: a person takes a conversation over, answers the user, and hands it back.

Each is an update of the conversation's workflow, run in order with the user's turns, so
the transcript keeps one order: the user's words, the bot's or the person's replies, and
where the conversation changed hands.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request, status
from temporalio.service import RPCError, RPCStatusCode

from api.deps import AgentPrincipal, FlagsDep, SettingsDep, TemporalClientDep
from api.errors import ApiError, closed_conversation, temporal_errors
from api.routes.conversations import ConversationIdPath, IdempotencyKey, require_flag
from dialogue.identity import Principal
from dialogue.temporal import conversation_key, workflow_id
from workflows.contracts import (
    AgentMessageReply,
    AgentMessageRequest,
    ConversationState,
    HandbackRequest,
    HandoffRequest,
)
from workflows.conversation import ConversationWorkflow

router = APIRouter(prefix="/conversations", tags=["handoff"])


@router.post("/{conversation_id}/handoff")
async def hand_off(
    conversation_id: ConversationIdPath,
    body: HandoffRequest,
    request: Request,
    settings: SettingsDep,
    temporal: TemporalClientDep,
    principal: AgentPrincipal,
    feature_flags: FlagsDep,
    idempotency_key: IdempotencyKey = None,
) -> ConversationState:
    """A person takes the conversation over: the bot stops answering; the user's turns wait for the person."""
    flags = require_flag(feature_flags, principal, conversation_id, "handoff")
    reason = request.app.state.privacy.for_storage(body.reason, enabled=flags["redaction"])
    body = body.model_copy(update={"reason": reason})
    state: ConversationState = await _update(
        temporal, settings, principal, conversation_id, ConversationWorkflow.handoff, body, idempotency_key
    )
    return state


@router.post("/{conversation_id}/agent-messages", status_code=status.HTTP_201_CREATED)
async def post_agent_message(
    conversation_id: ConversationIdPath,
    body: AgentMessageRequest,
    request: Request,
    settings: SettingsDep,
    temporal: TemporalClientDep,
    principal: AgentPrincipal,
    feature_flags: FlagsDep,
    idempotency_key: IdempotencyKey = None,
) -> AgentMessageReply:
    """A person's reply to the user (409 unless the conversation is handed off): recorded in the
    transcript and sent to the conversation's event stream."""
    flags = require_flag(feature_flags, principal, conversation_id, "handoff")
    if len(body.text) > settings.max_text_chars:
        raise ApiError(422, "invalid_turn", f"text is longer than {settings.max_text_chars} characters")
    text = request.app.state.privacy.for_storage(body.text, enabled=flags["redaction"])
    body = body.model_copy(update={"text": text})
    reply: AgentMessageReply = await _update(
        temporal,
        settings,
        principal,
        conversation_id,
        ConversationWorkflow.agent_message,
        body,
        idempotency_key,
    )
    return reply


@router.post("/{conversation_id}/handback")
async def hand_back(
    conversation_id: ConversationIdPath,
    body: HandbackRequest,
    settings: SettingsDep,
    temporal: TemporalClientDep,
    principal: AgentPrincipal,
    feature_flags: FlagsDep,
    idempotency_key: IdempotencyKey = None,
) -> ConversationState:
    """The bot answers the user's turns again."""
    # Off, a conversation a person held goes back to the bot by itself, at the user's next turn.
    require_flag(feature_flags, principal, conversation_id, "handoff")
    state: ConversationState = await _update(
        temporal, settings, principal, conversation_id, ConversationWorkflow.handback, body, idempotency_key
    )
    return state


async def _update(
    temporal: TemporalClientDep,
    settings: SettingsDep,
    principal: Principal,
    conversation_id: str,
    update: Any,
    body: Any,
    idempotency_key: str | None,
) -> Any:
    key = conversation_key(principal.tenant, conversation_id)
    handle = temporal.get_workflow_handle(workflow_id(key))
    with temporal_errors(conversation_id):
        try:
            # It waits for the turn in progress, if any: bounded like a turn.
            return await asyncio.wait_for(
                # The same key again (a retry after a time-out) is the same update: it runs once.
                handle.execute_update(update, body, id=idempotency_key),
                timeout=settings.turn_timeout_seconds,
            )
        except TimeoutError:
            raise ApiError(504, "update_timeout", "the conversation is busy; retry shortly") from None
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND:
                raise
            # Its workflow is closed (ended, or broken) or never existed.
            raise await closed_conversation(temporal, key, conversation_id) from None
