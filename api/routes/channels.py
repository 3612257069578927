"""`/v1/channels/{name}`: the webhooks messaging platforms call with their users' messages.

The platform's signature is the request's authentication (no key: `dialogue.platform.channels.inbound`).
A message is acknowledged once its conversation has taken it as a turn (Temporal accepted the update),
not once it is answered: the reply goes back through the platform's API from the workflow (`deliver`), so
a slow answer never makes the platform send the message again. The message's id on the platform is the
turn's id: a platform's retry of it, however often, is the same turn.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

from fastapi import APIRouter, Path, Request, Response
from starlette.concurrency import run_in_threadpool
from temporalio.client import (
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
    WorkflowUpdateStage,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from api.deps import EngineDep, PoliciesDep, ReleasesDep, SettingsDep, TemporalClientDep
from api.errors import ApiError, responses, temporal_errors
from api.routes.conversations import settle, turn_and_start
from dialogue.model.contracts import ApprovalReply, ApprovalRequest, Button, TurnReply, Updates
from dialogue.platform import store
from dialogue.platform.channels import inbound, ledger
from dialogue.platform.channels.config import CHANNEL_NAME, ChannelConfig, TwilioChannel, WhatsAppChannel
from dialogue.platform.settings import Settings
from dialogue.platform.temporal import conversation_key, workflow_id

router = APIRouter(prefix="/channels", tags=["channels"])
log = logging.getLogger("dialogue.api")

ChannelName = Annotated[
    str, Path(pattern=CHANNEL_NAME, description="The channel's name (`DIALOGUE_CHANNELS`).")
]
EMPTY_TWIML = b'<?xml version="1.0" encoding="UTF-8"?><Response></Response>'
"""Twilio's acknowledgement that sends nothing itself: the reply goes through the Messages API."""


@router.post(
    "/{name}",
    responses=responses(
        "channel_not_found", "invalid_signature", "bad_request", "bot_not_found", "temporal_unavailable"
    ),
)
async def receive_message(
    name: ChannelName,
    request: Request,
    settings: SettingsDep,
    engine: EngineDep,
    temporal: TemporalClientDep,
    policies: PoliciesDep,
    releases: ReleasesDep,
) -> Response:
    """A platform's webhook: its user's message becomes a turn of the conversation its thread holds, and
    is acknowledged once the conversation has taken it. 401 `invalid_signature` when the platform's
    signature does not match (or its timestamp is stale); 503 when the conversation could not take the
    message in time (the platform sends it again, and it is still one turn)."""
    config = _channel(settings, name)
    body = await request.body()
    headers = {key.lower(): value for key, value in request.headers.items()}
    try:
        got = inbound.read(name, config, inbound.Request(url=str(request.url), headers=headers, body=body))
    except inbound.Refused as err:
        raise ApiError("invalid_signature", str(err)) from None
    except inbound.Unreadable as err:
        raise ApiError("bad_request", str(err)) from None
    except inbound.NotInbound as err:
        raise ApiError("channel_not_found", str(err)) from None
    if isinstance(got, inbound.Handshake):
        return Response(got.body, media_type=got.media_type)
    if got is not None and got.decision is not None:
        await _decide(got, got.decision, config, settings, engine, temporal)
    elif got is not None:
        await _take(got, config, settings, engine, temporal, policies, releases)
    if got is not None and got.answer is not None:
        return Response(got.answer, media_type="application/json")
    if isinstance(config, TwilioChannel):
        return Response(EMPTY_TWIML, media_type="text/xml")
    return Response(b"ok", media_type="text/plain")


@router.get("/{name}", responses=responses("channel_not_found", "invalid_signature"))
async def verify_webhook(name: ChannelName, request: Request, settings: SettingsDep) -> Response:
    """WhatsApp's subscription check of the webhook (`hub.mode=subscribe`, `hub.verify_token`, answered
    with `hub.challenge`)."""
    config = _channel(settings, name)
    if not isinstance(config, WhatsAppChannel):
        raise ApiError("channel_not_found", f"channel {name!r} has no subscription check")
    try:
        handshake = inbound.whatsapp_subscription(config, dict(request.query_params))
    except inbound.Refused as err:
        raise ApiError("invalid_signature", str(err)) from None
    return Response(handshake.body, media_type=handshake.media_type)


async def _take(
    message: inbound.Inbound,
    config: ChannelConfig,
    settings: Settings,
    engine: EngineDep,
    temporal: TemporalClientDep,
    policies: PoliciesDep,
    releases: ReleasesDep,
) -> None:
    """The message as a turn of its thread's conversation (a new one once the last has ended), taken."""
    conversation_id = await run_in_threadpool(_conversation_of, engine, message, config.tenant)
    key = conversation_key(config.tenant, conversation_id)
    turn, start = turn_and_start(
        settings,
        policies,
        releases,
        key,
        message.text[: settings.max_text_chars],
        policies.evaluate(key),
        user=message.user,
        bot=config.bot,
        channel=message.address,
    )
    async with temporal_errors(conversation_id, temporal=temporal, key=key, turn_id=message.message_id):
        try:
            await asyncio.wait_for(
                temporal.start_update_with_start_workflow(
                    Updates.TURN,
                    turn,
                    start_workflow_operation=start,
                    id=message.message_id,
                    wait_for_stage=WorkflowUpdateStage.ACCEPTED,
                    result_type=TurnReply,
                ),
                timeout=settings.channel_ack_seconds,
            )
        except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError):
            # The SDK may report the call cut short by the deadline as its own error.
            await settle(start)
            raise ApiError(
                "temporal_unavailable", "the conversation did not take the message in time; send it again"
            ) from None
        except WorkflowAlreadyStartedError:
            await settle(start)
            # Ended between the store's look and the start: the platform's retry starts the next one.
            raise ApiError("temporal_unavailable", "the conversation has just ended; send it again") from None


async def _decide(
    press: inbound.Inbound,
    button: Button,
    config: ChannelConfig,
    settings: Settings,
    engine: EngineDep,
    temporal: TemporalClientDep,
) -> None:
    """An approval's button pressed: the decision on its call, as the conversation's user (the thread's
    person, or the tenant where the thread is shared), once the conversation has taken it. A press the
    conversation refuses (the call decided already by an earlier press, or gone) is acknowledged and left:
    the platform would only send it again."""
    conversation_id = await run_in_threadpool(ledger.current_conversation, engine, press.thread)
    if conversation_id is None:
        return  # under a message of a conversation this deployment does not hold
    key = conversation_key(config.tenant, conversation_id)
    decision = ApprovalRequest(
        call_id=button.value, approve=button.action == "approve", by=press.by or "channel", user=press.user
    )
    handle = temporal.get_workflow_handle(workflow_id(key))
    async with temporal_errors(conversation_id, temporal=temporal, key=key):
        try:
            await asyncio.wait_for(
                handle.start_update(
                    Updates.APPROVE,
                    decision,
                    id=press.message_id,
                    wait_for_stage=WorkflowUpdateStage.ACCEPTED,
                    result_type=ApprovalReply,
                ),
                timeout=settings.channel_ack_seconds,
            )
        except WorkflowUpdateFailedError as err:
            log.info(
                "channel %s: a press on call %s refused: %s", press.address.channel, button.value, err.cause
            )
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND:
                raise
        except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError):
            raise ApiError(
                "temporal_unavailable", "the conversation did not take the decision in time; send it again"
            ) from None


def _conversation_of(engine: EngineDep, message: inbound.Inbound, tenant: str) -> str:
    """The conversation the message's thread holds, or the thread's next one when that has ended."""
    current = ledger.current_conversation(engine, message.thread)
    if current is not None:
        status = store.conversation_status(engine, conversation_key(tenant, current))
        if status is None or status == "active":
            return current
    return ledger.next_conversation(engine, message.thread, current, message.message_id)


def _channel(settings: Settings, name: str) -> ChannelConfig:
    config = settings.channels.get(name)
    if config is None:
        raise ApiError("channel_not_found", f"no channel {name!r} is configured here")
    return config
