"""`/v1/conversations/{id}/reminders`: messages the bot sends the user later, on its own; and `/v1/events`,
by which the integrator's system reports what reminders may wait for ("order NW-105733 shipped").

The integrator's server schedules one ("remind me tomorrow at 9", or the bot's follow-up); the conversation
keeps it as a durable timer, lists it in its state (`reminders`), and, when it is due, says it in the
transcript, to the open widget or chat, and on the conversation's messaging platform."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Path, Response, status

from api.deps import ClientPrincipal, PoliciesDep, SettingsDep, TemporalClientDep
from api.errors import WORKFLOW_UPDATE, ApiError, responses, temporal_errors
from api.routes.conversations import ConversationIdPath, IdempotencyKey, execute_update
from dialogue.model.api_models import EventCreate, EventOutcome, ReminderCreate
from dialogue.model.contracts import (
    CancelReminderRequest,
    ConversationState,
    EventReply,
    EventRequest,
    Reminder,
    ReminderRequest,
    Updates,
)
from dialogue.platform.temporal import AWAITS, TENANT, conversation_key, key_of
from dialogue.security.identity import Principal

router = APIRouter(prefix="/conversations", tags=["conversations"])
log = logging.getLogger("dialogue.api")
ReminderIdPath = Annotated[str, Path(max_length=200, description="The reminder's id.")]


@router.post(
    "/{conversation_id}/reminders",
    status_code=status.HTTP_201_CREATED,
    responses=responses("forbidden", "invalid_turn", "too_many_reminders", *WORKFLOW_UPDATE),
)
async def create_reminder(
    conversation_id: ConversationIdPath,
    body: ReminderCreate,
    settings: SettingsDep,
    temporal: TemporalClientDep,
    principal: ClientPrincipal,
    policies: PoliciesDep,
    idempotency_key: IdempotencyKey = None,
) -> Reminder:
    """Schedule a message `in_seconds` from now, within a year, or for when your system reports the event
    `on_event` (`POST /v1/events`); the same `Idempotency-Key` again schedules it once. A server-side
    key's (an end user's token: 403)."""
    _server_only(principal)
    if len(body.text) > settings.max_text_chars:
        raise ApiError("invalid_turn", f"text is longer than {settings.max_text_chars} characters")
    due_at = datetime.now(UTC) + timedelta(seconds=body.in_seconds)
    key = conversation_key(principal.tenant, conversation_id)
    flags = policies.evaluate(key)
    text = policies.privacy(key).for_storage(body.text, enabled=flags["redaction"])
    request = ReminderRequest(text=text, due_at=due_at, by=principal.subject, on_event=body.on_event)
    reminder: Reminder = await execute_update(
        temporal, settings, principal, conversation_id, Updates.REMIND, request, idempotency_key, Reminder
    )
    return reminder


@router.delete(
    "/{conversation_id}/reminders/{reminder_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=responses("forbidden", "reminder_not_found", *WORKFLOW_UPDATE),
)
async def cancel_reminder(
    conversation_id: ConversationIdPath,
    reminder_id: ReminderIdPath,
    settings: SettingsDep,
    temporal: TemporalClientDep,
    principal: ClientPrincipal,
) -> Response:
    """Cancel a reminder that has not been sent (404 `reminder_not_found` once it has, or is cancelled)."""
    _server_only(principal)
    await execute_update(
        temporal,
        settings,
        principal,
        conversation_id,
        Updates.CANCEL_REMINDER,
        CancelReminderRequest(id=reminder_id),
        None,
        ConversationState,
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)


events = APIRouter(prefix="/events", tags=["conversations"])
EVENT_FAN_OUT = 16
"""Conversations told of one event at once."""


@events.post("", responses=responses("forbidden", "temporal_unavailable"))
async def report_event(
    body: EventCreate,
    settings: SettingsDep,
    temporal: TemporalClientDep,
    principal: ClientPrincipal,
) -> EventOutcome:
    """Your system reports an event ("order NW-105733 shipped"): every conversation of your tenant with a
    reminder waiting for it (`on_event`) says that reminder next. Reporting it again does nothing more. A
    reminder scheduled within the last second may not be found yet (Temporal's visibility lags a little)."""
    _server_only(principal)
    query = (
        f"{TENANT.name} = '{principal.tenant}' AND {AWAITS.name} = '{body.name}'"
        " AND ExecutionStatus = 'Running'"
    )
    async with temporal_errors(""):
        keys = [key_of(w.id) async for w in temporal.list_workflows(query)]
    limit = asyncio.Semaphore(EVENT_FAN_OUT)

    async def tell(conversation_id: str) -> EventReply | None:
        async with limit:
            try:
                reply: EventReply = await execute_update(
                    temporal,
                    settings,
                    principal,
                    conversation_id,
                    Updates.EVENT,
                    EventRequest(name=body.name),
                    None,
                    EventReply,
                )
            except ApiError as err:  # said already (a late match), closed since: nothing to tell
                log.info("event %s not told to %s: %s", body.name, conversation_id, err.message)
                return None
            except Exception:  # one conversation failing is no reason to tell the others nothing
                log.exception("event %s not told to %s", body.name, conversation_id)
                return None
            return reply

    prefix = f"{principal.tenant}/"
    told = await asyncio.gather(
        *(tell(key.removeprefix(prefix)) for key in keys if key is not None and key.startswith(prefix))
    )
    return EventOutcome(name=body.name, conversations=[t for t in told if t is not None and t.reminders])


def _server_only(principal: Principal) -> None:
    if principal.user is not None:
        raise ApiError(
            "forbidden", "reminders are scheduled by the integrator's server, not an end user's token"
        )
