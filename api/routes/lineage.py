"""What produced an answer, and what its user thought of it: the audit trail of every reply.

The lineage (NLU model and result, documents with their versions and scores, generator,
model and prompt version, timings) is stored with the reply by `record_turn`; ratings are
stored beside it and `dialogue feedback export` writes both out to improve the bot. A user may score the
whole conversation too (1 to 5): the numbers per bot version count both.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Path, status
from starlette.concurrency import run_in_threadpool
from temporalio.client import (
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.service import RPCError

from api.deps import EngineDep, PoliciesDep, SettingsDep, TemporalClientDep
from api.errors import ApiError, responses, temporal_errors
from api.routes.conversations import ConversationIdPath, OwnerPrincipal, TurnIdPath, turn_result
from dialogue.model.api_models import (
    FeedbackCreate,
    FeedbackPublic,
    SatisfactionCreate,
    SatisfactionPublic,
    ToolResultPublic,
    TurnLineage,
)
from dialogue.platform import store
from dialogue.platform.db import Message, Satisfaction, ToolResult
from dialogue.platform.metrics import BOT_RATINGS, BOT_SATISFACTION
from dialogue.platform.temporal import conversation_key, workflow_id

router = APIRouter(prefix="/conversations", tags=["lineage"])


@router.get("/{conversation_id}/turns/{turn_id}/lineage", responses=responses("turn_not_found"))
async def read_lineage(
    conversation_id: ConversationIdPath,
    turn_id: TurnIdPath,
    engine: EngineDep,
    temporal: TemporalClientDep,
    settings: SettingsDep,
    principal: OwnerPrincipal,
) -> TurnLineage:
    """What produced a turn's answer, and its rating if it has one; a turn still running (sent with
    `wait: false`) is waited for, within the turn's timeout."""
    key = conversation_key(principal.tenant, conversation_id)
    answer = await _answer(engine, temporal, settings, key, conversation_id, turn_id)
    rating = await run_in_threadpool(store.get_feedback, engine, key, turn_id)
    return TurnLineage(
        conversation_id=conversation_id,
        turn_id=turn_id,
        turn_index=answer.turn_index,
        reply=answer.text,
        degraded=answer.degraded,
        lineage=answer.lineage,
        feedback=FeedbackPublic.model_validate(rating, from_attributes=True) if rating else None,
    )


@router.post(
    "/{conversation_id}/turns/{turn_id}/feedback",
    status_code=status.HTTP_201_CREATED,
    responses=responses("turn_not_found"),
)
async def rate_answer(
    conversation_id: ConversationIdPath,
    turn_id: TurnIdPath,
    body: FeedbackCreate,
    engine: EngineDep,
    principal: OwnerPrincipal,
    policies: PoliciesDep,
    temporal: TemporalClientDep,
    settings: SettingsDep,
) -> FeedbackPublic:
    """Rate a turn's answer up or down, with an optional comment (redacted like a turn's text); a turn
    still running is waited for."""
    key = conversation_key(principal.tenant, conversation_id)
    answer = await _answer(engine, temporal, settings, key, conversation_id, turn_id)
    redaction = policies.enabled("redaction", key)
    comment = policies.privacy(key).for_storage(body.comment, enabled=redaction) if body.comment else None
    bot, version = (answer.lineage or {}).get("bot"), (answer.lineage or {}).get("bot_version")
    row = await run_in_threadpool(
        store.record_feedback,
        engine,
        key,
        turn_id,
        rating=body.rating,
        comment=comment,
        author=principal.subject,
        at=datetime.now(UTC),
    )
    if bot and version:
        BOT_RATINGS.labels(bot, version, body.rating).inc()
    return FeedbackPublic.model_validate(row, from_attributes=True)


@router.post(
    "/{conversation_id}/satisfaction",
    status_code=status.HTTP_201_CREATED,
    responses=responses("nothing_to_score", "conversation_not_found", "temporal_unavailable"),
)
async def score_conversation(
    conversation_id: ConversationIdPath,
    body: SatisfactionCreate,
    engine: EngineDep,
    temporal: TemporalClientDep,
    principal: OwnerPrincipal,
    policies: PoliciesDep,
) -> SatisfactionPublic:
    """The user's 1 to 5 score of the whole conversation, with an optional comment (redacted like a turn's
    text); scoring again replaces it. Counted for the bot version that answered the conversation's last
    turn (`GET /v1/bots/{bot}/numbers`)."""
    key = conversation_key(principal.tenant, conversation_id)
    last = await run_in_threadpool(store.last_bot_turn, engine, key)
    if last is None:  # nothing answered yet: nothing to score, if the conversation exists at all
        if await run_in_threadpool(store.get_conversation, engine, key) is None:
            async with temporal_errors(conversation_id):
                await temporal.get_workflow_handle(workflow_id(key)).describe()  # 404 when it does not exist
        raise ApiError("nothing_to_score", f"no answered turn in conversation {conversation_id!r} to score")
    redaction = policies.enabled("redaction", key)
    comment = policies.privacy(key).for_storage(body.comment, enabled=redaction) if body.comment else None
    row = await run_in_threadpool(
        lambda: store.record_satisfaction(
            engine,
            key,
            bot=last.bot,
            version=last.version,
            score=body.score,
            comment=comment,
            author=principal.subject,
            at=datetime.now(UTC),
        )
    )
    BOT_SATISFACTION.labels(last.bot, last.version).observe(body.score)
    return satisfaction_public(conversation_id, row)


def satisfaction_public(conversation_id: str, row: Satisfaction) -> SatisfactionPublic:
    """A conversation's score as the API gives it, under the id its caller knows it by."""
    return SatisfactionPublic.model_validate(row.model_dump() | {"conversation_id": conversation_id})


async def _answer(
    engine: EngineDep,
    temporal: TemporalClientDep,
    settings: SettingsDep,
    key: str,
    conversation_id: str,
    turn_id: str,
) -> Message:
    """The turn's answer in the transcript; when it is not there yet, the turn is waited for (within the
    turn's timeout) if its conversation is still running it: a client that sent it with `wait: false`
    may ask at once. 404 for a turn the conversation does not know."""
    answer = await run_in_threadpool(store.bot_message, engine, key, turn_id)
    if answer is not None:
        return answer
    with contextlib.suppress(
        RPCError,
        TimeoutError,
        WorkflowUpdateFailedError,
        WorkflowQueryFailedError,
        WorkflowUpdateRPCTimeoutOrCancelledError,
    ):
        await asyncio.wait_for(turn_result(temporal, key, turn_id), timeout=settings.turn_timeout_seconds)
        answer = await run_in_threadpool(store.bot_message, engine, key, turn_id)
    if answer is None:
        raise _no_answer(conversation_id, turn_id)
    return answer


def _no_answer(conversation_id: str, turn_id: str) -> ApiError:
    return ApiError("turn_not_found", f"no answered turn {turn_id!r} in conversation {conversation_id!r}")


@router.get("/{conversation_id}/tool-results/{call_id}", responses=responses("tool_result_not_found"))
async def read_tool_result(
    conversation_id: ConversationIdPath,
    call_id: Annotated[str, Path(max_length=200, description="The tool call's id, as the lineage names it.")],
    engine: EngineDep,
    principal: OwnerPrincipal,
) -> ToolResultPublic:
    """The whole result of a tool call the model saw cut; 404 for a call whose result was short enough."""
    key = conversation_key(principal.tenant, conversation_id)
    row = await run_in_threadpool(store.tool_result, engine, key, call_id)
    if row is None:
        raise ApiError(
            "tool_result_not_found",
            f"no whole result of call {call_id!r} in conversation {conversation_id!r}",
        )
    return tool_result_public(conversation_id, row)


def tool_result_public(conversation_id: str, row: ToolResult) -> ToolResultPublic:
    """A kept tool result as the API gives it: its content parsed back from the JSON it was stored as."""
    return ToolResultPublic(
        conversation_id=conversation_id,
        call_id=row.call_id,
        name=row.name,
        size=row.size,
        sha256=row.sha256,
        result=_parsed(row.content),
        created_at=row.created_at,
    )


def _parsed(content: str) -> Any:
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:  # not JSON after all: the text as stored
        return content
