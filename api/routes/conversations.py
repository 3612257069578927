"""`/v1/conversations`: send turns to conversation workflows, read their state and transcripts, end them."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Body, Depends, Header, Path, Query, Request, Response, status
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from temporalio.client import (
    WithStartWorkflowOperation,
    WorkflowHandle,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
    WorkflowUpdateStage,
)
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from api.deps import ClientPrincipal, EngineDep, PoliciesDep, ReleasesDep, SettingsDep, TemporalClientDep
from api.errors import (
    WORKFLOW_READ,
    WORKFLOW_UPDATE,
    ApiError,
    conversation_ended,
    not_found,
    responses,
    temporal_errors,
)
from api.limits import StreamSlots
from api.policies import BotPolicies
from api.request_telemetry import mark_turn
from api.streaming import ResumePoint, conversation_stream, stream_response, turn_stream
from dialogue.model.api_models import (
    ID_PATTERN,
    IDEMPOTENCY_KEY_PATTERN,
    MAX_OFFSET,
    ConversationCreate,
    ConversationCreated,
    ConversationEnded,
    ConversationsPage,
    ConversationSummary,
    MessagePublic,
    MessagesPage,
    TurnAccepted,
    TurnCreate,
    TurnStatus,
)
from dialogue.model.contracts import (
    WORKFLOW_TYPE,
    ChannelAddress,
    ConversationState,
    EndRequest,
    Queries,
    Signals,
    TurnReply,
    TurnRequest,
    Updates,
)
from dialogue.platform import events, store
from dialogue.platform.channels.config import WebhookChannel
from dialogue.platform.flags import Flag
from dialogue.platform.recovery import BROKEN
from dialogue.platform.releases import ReleaseCache
from dialogue.platform.settings import Settings
from dialogue.platform.starting import conversation_input, start_options
from dialogue.platform.temporal import conversation_key, workflow_id
from dialogue.security import erasure
from dialogue.security.identity import Principal

router = APIRouter(prefix="/conversations", tags=["conversations"])
R = TypeVar("R")
log = logging.getLogger("dialogue.api")

# A query needs a worker; without one it would wait for the server's own deadline.
QUERY_TIMEOUT = timedelta(seconds=10)
TURN_POLL_SECONDS = 0.5

ConversationIdPath = Annotated[str, Path(pattern=ID_PATTERN, description="The conversation's id.")]
IdempotencyKey = Annotated[
    str | None,
    Header(
        max_length=200,
        pattern=IDEMPOTENCY_KEY_PATTERN,
        description="Makes a retried request return the first one's answer instead of doing it a second time.",
    ),
]
LastEventId = Annotated[
    str | None,
    Header(max_length=200, description="The last event a reconnecting stream client received."),
]
TurnIdPath = Annotated[str, Path(max_length=200, description="The turn's id (its idempotency key).")]
SSE_RESPONSE = {
    "content": {
        "text/event-stream": {
            # Each event, as an SSE client reads it: its name, its data (JSON text) and its id.
            "schema": {
                "type": "object",
                "properties": {
                    "event": {"type": "string"},
                    "data": {"type": "string", "description": "JSON"},
                    "id": {"type": "string"},
                },
                "required": ["event", "data"],
            },
            "example": 'id: 7\nevent: token\ndata: {"text": "Express "}\n\n'
            'id: 9-final\nevent: final\ndata: {"conversation_id": "demo-1", "turn_id": "…", "reply": {…}}\n\n',
        }
    },
    "description": "With `Accept: text/event-stream`: the turn's events (`nlu`, `sources`, `token`, "
    "`restart`; an agent's `tool_call`, `tool_result` and `approval_required`), then `final` with the reply, or `error`.",
}


async def require_owner(
    engine: EngineDep, temporal: TemporalClientDep, principal: Principal, conversation_id: str
) -> None:
    """404 for an end user's request to a conversation that is not theirs, as for one that does not exist;
    nothing for a server-side key (it speaks for its tenant). The store's record of the owner first; when it
    has none (not recorded yet, a conversation without an end user, the store unavailable), the workflow's
    own, which is where the conversation's user was set."""
    if principal.user is None:
        return
    key = _key(principal, conversation_id)
    try:
        recorded = await run_in_threadpool(store.owner, engine, key)
    except SQLAlchemyError as err:
        log.warning("store unavailable; the owner of %s asked of Temporal: %s", conversation_id, err)
        recorded = None
    if recorded is None:
        async with temporal_errors(conversation_id):
            state: ConversationState = await _handle(temporal, key).query(
                Queries.STATE, result_type=ConversationState, rpc_timeout=QUERY_TIMEOUT
            )
        recorded = state.user
    if not principal.may_use(recorded):
        raise not_found(conversation_id)


async def owning_caller(
    conversation_id: ConversationIdPath,
    engine: EngineDep,
    temporal: TemporalClientDep,
    principal: ClientPrincipal,
) -> Principal:
    """The caller, once it may use the path's conversation (`require_owner`)."""
    await require_owner(engine, temporal, principal, conversation_id)
    return principal


OwnerPrincipal = Annotated[Principal, Depends(owning_caller)]
"""A caller with the client scope that may use the path's conversation: a key of its tenant, or its end user."""


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses=responses(
        "forbidden", "conversation_ended", "conversation_exists", "channel_not_found", *WORKFLOW_READ
    ),
)
async def create_conversation(
    settings: SettingsDep,
    engine: EngineDep,
    temporal: TemporalClientDep,
    principal: ClientPrincipal,
    policies: PoliciesDep,
    releases: ReleasesDep,
    body: Annotated[ConversationCreate | None, Body()] = None,
) -> ConversationCreated:
    """Start a conversation; the client may choose its id, give what is known before the first turn
    (`slots`, redacted as a turn's text is; trusted when a server-side key gives them), and name the end
    user it is for (`user`; an end user's own token starts conversations of their own)."""
    conversation_id = (body.id if body else None) or uuid.uuid4().hex
    user = body.user if body else None
    if principal.user is not None and user not in (None, principal.user):
        raise ApiError("forbidden", "an end user's token starts conversations for that user only")
    owner = principal.user or user
    await _refuse_if_ended(engine, principal, conversation_id)
    key = _key(principal, conversation_id)
    bot = releases.choose(body.bot if body else None, key)
    if bot is None:
        raise ApiError("bot_not_found", f"no bot {body.bot if body else None!r} is released here")
    channel = _webhook_channel(settings, principal, body.channel if body else None, conversation_id)
    policy = policies.of(key, bot.ref.bot)
    redaction = policy.flags.evaluate(key)["redaction"]
    slots = {
        name: policy.privacy.for_storage(value, enabled=redaction)
        for name, value in (body.slots if body else {}).items()
    }
    async with temporal_errors(conversation_id, temporal=temporal, key=key):
        await temporal.start_workflow(
            WORKFLOW_TYPE,
            conversation_input(
                settings,
                conversation_id,
                tenant=principal.tenant,
                double_text=body.double_text if body else None,
                slots=slots,
                # The integrator's server vouches for what it sets; an end user's slots are as if typed.
                trusted_slots=list(slots) if principal.user is None else [],
                user=owner,
                bot=bot.ref,
                channel=channel,
            ),
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            result_type=ConversationState,
            **start_options(settings, key, principal.tenant, owner),
        )
    return ConversationCreated(conversation_id=conversation_id, status="active")


@router.post(
    "/{conversation_id}/turns",
    response_model=TurnReply | TurnAccepted,
    responses={
        200: SSE_RESPONSE,
        202: {"model": TurnAccepted, "description": "`wait` was false: the turn is queued."},
        204: {"description": "Streaming resumed after the final event: nothing more to send."},
        **responses(
            "invalid_turn",
            "idempotency_conflict",
            "overloaded",
            "turn_in_progress",
            "turn_queue_full",
            "turn_timeout",
            *WORKFLOW_UPDATE,
        ),
    },
)
async def create_turn(
    conversation_id: ConversationIdPath,
    body: TurnCreate,
    settings: SettingsDep,
    engine: EngineDep,
    temporal: TemporalClientDep,
    response: Response,
    request: Request,
    principal: ClientPrincipal,
    policies: PoliciesDep,
    releases: ReleasesDep,
    idempotency_key: IdempotencyKey = None,
    accept: Annotated[str | None, Header()] = None,
    last_event_id: LastEventId = None,
) -> TurnReply | TurnAccepted | Response:
    """Send a user turn and wait for the reply (or, with `wait: false`, only until it is queued: 202;
    or, with `Accept: text/event-stream`, stream its progress); creates the conversation if it does not exist."""
    if len(body.text) > settings.max_text_chars:
        raise ApiError("invalid_turn", f"text is longer than {settings.max_text_chars} characters")
    if idempotency_key and body.idempotency_key and idempotency_key != body.idempotency_key:
        raise ApiError("idempotency_conflict", "the Idempotency-Key header and idempotency_key differ")
    flags = policies.evaluate(_key(principal, conversation_id))
    # Streaming off, the turn is answered all the same, as JSON: its Content-Type tells the client.
    streaming = flags["streaming"] and "text/event-stream" in (accept or "")
    resume = ResumePoint(last_event_id)
    if streaming and resume.finished:
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    await _refuse_if_ended(engine, principal, conversation_id)
    turn_id = idempotency_key or body.idempotency_key or str(uuid.uuid4())
    key = _key(principal, conversation_id)
    turn, start = turn_and_start(
        settings,
        policies,
        releases,
        key,
        body.text,
        flags,
        user=principal.user,
        stream=streaming,
    )
    async with temporal_errors(
        conversation_id, temporal=temporal, key=_key(principal, conversation_id), turn_id=turn_id
    ):
        try:
            if streaming:
                update = await temporal.start_update_with_start_workflow(
                    Updates.TURN,
                    turn,
                    start_workflow_operation=start,
                    id=turn_id,
                    wait_for_stage=WorkflowUpdateStage.ACCEPTED,
                    result_type=TurnReply,
                )
                return stream_response(
                    turn_stream(
                        engine,
                        _key(principal, conversation_id),
                        turn_id,
                        _marked(request, update.result),
                        after=resume.after,
                        timeout_seconds=settings.turn_timeout_seconds,
                    )
                )
            if not body.wait:
                await temporal.start_update_with_start_workflow(
                    Updates.TURN,
                    turn,
                    start_workflow_operation=start,
                    id=turn_id,
                    wait_for_stage=WorkflowUpdateStage.ACCEPTED,
                    result_type=TurnReply,
                )
                response.status_code = status.HTTP_202_ACCEPTED
                response.headers["Location"] = f"/v1/conversations/{conversation_id}/turns/{turn_id}"
                return TurnAccepted(conversation_id=conversation_id, turn_id=turn_id)
            reply: TurnReply = await asyncio.wait_for(
                temporal.execute_update_with_start_workflow(
                    Updates.TURN, turn, start_workflow_operation=start, id=turn_id, result_type=TurnReply
                ),
                timeout=settings.turn_timeout_seconds,
            )
        except (WorkflowAlreadyStartedError, TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError):
            # Closed (ended, or broken: its id is never reused), or not answered in time.
            await settle(start)
            raise
    mark_turn(request.state, reply)
    return reply


def _webhook_channel(
    settings: Settings, principal: Principal, name: str | None, conversation_id: str
) -> ChannelAddress | None:
    """Where a new conversation's messages are POSTed too: a webhook channel of the caller's tenant."""
    if name is None:
        return None
    if principal.user is not None:
        raise ApiError("forbidden", "an end user's token names no channel: the integrator's server does")
    config = settings.channels.get(name)
    if not isinstance(config, WebhookChannel) or config.tenant != principal.tenant:
        raise ApiError("channel_not_found", f"no webhook channel {name!r} is configured for this tenant")
    return ChannelAddress(channel=name, platform="webhook", to=conversation_id)


def turn_and_start(
    settings: Settings,
    policies: BotPolicies,
    releases: ReleaseCache,
    key: str,
    text: str,
    flags: dict[str, bool],
    *,
    user: str | None,
    stream: bool = False,
    bot: str | None = None,
    channel: ChannelAddress | None = None,
) -> tuple[TurnRequest, WithStartWorkflowOperation[Any, ConversationState]]:
    """A user's turn for the conversation with this key, and the operation that starts the conversation if
    it does not exist yet (update-with-start): from the API's turns and from a messaging platform's."""
    tenant, conversation_id = key.split("/", 1)
    # Personal data is redacted here, before the text reaches Temporal, the store or a model.
    turn = TurnRequest(
        text=policies.privacy(key).for_storage(text, enabled=flags["redaction"]),
        stream=stream,
        flags=flags,
        # The workflow refuses the turn of an end user the conversation does not belong to (404); a new
        # conversation started by this turn belongs to its sender.
        user=user,
        bot_versions=releases.running_moves(key),
    )
    # A conversation this turn starts gets the deployment's bot (or the one named), in the version its
    # release gives it.
    chosen = releases.choose(bot, key)
    if chosen is None and bot is not None:
        raise ApiError("bot_not_found", f"no bot {bot!r} is released here")
    start: WithStartWorkflowOperation[Any, ConversationState] = WithStartWorkflowOperation(
        WORKFLOW_TYPE,
        conversation_input(
            settings,
            conversation_id,
            tenant=tenant,
            user=user,
            bot=chosen.ref if chosen else None,
            channel=channel,
        ),
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        result_type=ConversationState,
        **start_options(settings, key, tenant, user),
    )
    return turn, start


def _marked(
    request: Request, result: Callable[[], Awaitable[TurnReply]]
) -> Callable[[], Awaitable[TurnReply]]:
    """A streamed turn's reply, marked for the request's metrics and log line once it arrives."""

    async def marked() -> TurnReply:
        reply = await result()
        mark_turn(request.state, reply)
        return reply

    return marked


@router.get("/{conversation_id}/turns/{turn_id}", responses=responses("turn_not_found", *WORKFLOW_READ))
async def read_turn(
    conversation_id: ConversationIdPath,
    turn_id: TurnIdPath,
    temporal: TemporalClientDep,
    principal: OwnerPrincipal,
) -> TurnStatus:
    """A turn's status, and its reply once it is completed."""
    key = _key(principal, conversation_id)
    async with temporal_errors(conversation_id, temporal=temporal, key=key, turn_id=turn_id):
        try:
            # The server holds the poll until the turn completes: wait a moment, no longer.
            reply = await asyncio.wait_for(turn_result(temporal, key, turn_id), timeout=TURN_POLL_SECONDS)
        except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError):
            # The SDK reports the cancelled poll as its own error rather than the time-out.
            return TurnStatus(conversation_id=conversation_id, turn_id=turn_id, status="running")
        except WorkflowUpdateFailedError as err:
            return TurnStatus(
                conversation_id=conversation_id, turn_id=turn_id, status="failed", error=str(err.cause)
            )
    return TurnStatus(conversation_id=conversation_id, turn_id=turn_id, status="completed", reply=reply)


@router.get(
    "/{conversation_id}/turns/{turn_id}/events",
    response_class=Response,
    responses={
        200: SSE_RESPONSE,
        204: {"description": "The client saw the final event already."},
        **responses("feature_disabled", "turn_not_found", "too_many_streams", *WORKFLOW_READ),
    },
)
async def follow_turn(
    conversation_id: ConversationIdPath,
    turn_id: TurnIdPath,
    settings: SettingsDep,
    engine: EngineDep,
    temporal: TemporalClientDep,
    principal: OwnerPrincipal,
    policies: PoliciesDep,
    request: Request,
    last_event_id: LastEventId = None,
) -> Response:
    """Follow a turn's events (an `EventSource` reconnects here with `Last-Event-ID`)."""
    require_flag(policies, principal, conversation_id, "streaming")
    resume = ResumePoint(last_event_id)
    if resume.finished:
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    give_back = _stream_slot(request, principal)
    try:
        result = asyncio.ensure_future(turn_result(temporal, _key(principal, conversation_id), turn_id))
        # Answer 404 before the stream starts when Temporal does not know the turn.
        await asyncio.wait({result}, timeout=TURN_POLL_SECONDS)
        if result.done() and result.exception() is not None:
            async with temporal_errors(
                conversation_id, temporal=temporal, key=_key(principal, conversation_id), turn_id=turn_id
            ):
                result.result()
    except BaseException:
        give_back()
        raise

    async def reply() -> TurnReply:
        return await result

    return stream_response(
        turn_stream(
            engine,
            _key(principal, conversation_id),
            turn_id,
            reply,
            after=resume.after,
            timeout_seconds=settings.turn_timeout_seconds,
        ),
        on_close=give_back,
    )


@router.get(
    "/{conversation_id}/events",
    response_class=Response,
    responses={200: SSE_RESPONSE, **responses("feature_disabled", "too_many_streams", *WORKFLOW_READ)},
)
async def follow_conversation(
    conversation_id: ConversationIdPath,
    settings: SettingsDep,
    engine: EngineDep,
    temporal: TemporalClientDep,
    principal: OwnerPrincipal,
    policies: PoliciesDep,
    request: Request,
    last_event_id: LastEventId = None,
    after: Annotated[
        int | None, Query(ge=0, le=10**18, description="Start after this event (else `Last-Event-ID`).")
    ] = None,
    from_now: Annotated[
        bool,
        Query(
            description="Start after the newest event, announced first as an `open` event with its id: "
            "for a client that has just read the transcript."
        ),
    ] = False,
) -> Response:
    """Every event of a conversation as it happens: streamed turns, a person's messages, handoffs.

    The stream ends after `DIALOGUE_STREAM_MAX_SECONDS`; the client reconnects with `Last-Event-ID`
    (an `EventSource` does by itself) and misses nothing."""
    # Off, no event stream at all; a person's messages are in the transcript (`…/messages`) all the same.
    require_flag(policies, principal, conversation_id, "streaming")
    key = _key(principal, conversation_id)
    if await run_in_threadpool(store.get_conversation, engine, key) is None:
        async with temporal_errors(conversation_id):
            await _handle(temporal, key).describe()  # 404 when it does not exist
    starting_now = after is None and last_event_id is None and from_now
    if starting_now:
        start = await run_in_threadpool(events.last, engine, key)
    else:
        # An EventSource reconnects to the same URL, `?after=` included, with the last id it saw: the later.
        start = max(after or 0, ResumePoint(last_event_id).after)
    give_back = _stream_slot(request, principal)  # last: nothing raises between this and the response
    return stream_response(
        conversation_stream(
            request.app.state.event_feeds,
            key,
            after=start,
            max_seconds=settings.stream_max_seconds,
            announce=starting_now,
        ),
        on_close=give_back,
    )


@router.get("/{conversation_id}", responses=responses(*WORKFLOW_READ))
async def read_conversation(
    conversation_id: ConversationIdPath,
    engine: EngineDep,
    temporal: TemporalClientDep,
    principal: OwnerPrincipal,
) -> ConversationState:
    """The live state of a conversation, from its workflow; `status` is `failed` when the workflow failed,
    was terminated or timed out (`workflow_status` says which), with the state it had then if it can be read."""
    key = _key(principal, conversation_id)
    handle = _handle(temporal, key)
    async with temporal_errors(conversation_id):
        state_query: Awaitable[ConversationState] = handle.query(
            Queries.STATE, result_type=ConversationState, rpc_timeout=QUERY_TIMEOUT
        )
        described, queried = await asyncio.gather(handle.describe(), state_query, return_exceptions=True)
        if isinstance(described, BaseException):
            raise described
        broken = BROKEN.get(described.status) if described.status else None
        if broken is None:
            if isinstance(queried, BaseException):
                raise queried
            state: ConversationState = queried
            return state
    # Broken, not ended: the state as the workflow last had it (or the store's record), marked failed.
    if isinstance(queried, BaseException):
        row = await run_in_threadpool(store.get_conversation, engine, key)
        queried = ConversationState(
            conversation_id=conversation_id,
            started_at=row.created_at if row else described.start_time,
            updated_at=row.updated_at if row else (described.close_time or described.start_time),
            turn_count=row.turn_count if row else 0,
            last_intent=row.last_intent if row else None,
        )
    return queried.model_copy(update={"status": "failed", "workflow_status": broken})


@router.get("/{conversation_id}/messages", responses=responses(*WORKFLOW_READ))
async def read_messages(
    conversation_id: ConversationIdPath,
    engine: EngineDep,
    temporal: TemporalClientDep,
    principal: OwnerPrincipal,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> MessagesPage:
    """The transcript, oldest first, a page at a time."""
    key = _key(principal, conversation_id)
    rows, total = await run_in_threadpool(store.read_messages, engine, key, limit=limit, offset=offset)
    if total == 0 and await run_in_threadpool(store.get_conversation, engine, key) is None:
        # Just created and not yet recorded, or unknown: Temporal knows which.
        async with temporal_errors(conversation_id):
            await _handle(temporal, _key(principal, conversation_id)).describe()
    answers = [row.turn_id for row in rows if row.role == "bot"]
    rated = await run_in_threadpool(store.ratings, engine, key, answers) if answers else {}
    items = [
        MessagePublic.model_validate(row, from_attributes=True).model_copy(
            update={"rating": rated.get(row.turn_id) if row.role == "bot" else None}
        )
        for row in rows
    ]
    return MessagesPage(items=items, total=total, limit=limit, offset=offset)


@router.post("/{conversation_id}/end", responses=responses(*WORKFLOW_READ))
async def end_conversation(
    conversation_id: ConversationIdPath, temporal: TemporalClientDep, principal: OwnerPrincipal
) -> ConversationEnded:
    """End a conversation: later turns get 409. Ending an ended conversation changes nothing."""
    key = _key(principal, conversation_id)
    try:
        async with temporal_errors(conversation_id, temporal=temporal, key=key):
            await _handle(temporal, key).signal(Signals.END, EndRequest())
    except ApiError as err:
        # Closed already: fine if it ended; 404 if it never existed; 503 if its workflow broke.
        if err.code != "conversation_ended":
            raise
    return ConversationEnded(conversation_id=conversation_id)


@router.delete(
    "/{conversation_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=responses("forbidden", *WORKFLOW_READ),
)
async def erase_conversation(
    conversation_id: ConversationIdPath,
    settings: SettingsDep,
    engine: EngineDep,
    temporal: TemporalClientDep,
    principal: ClientPrincipal,
) -> Response:
    """Erase a conversation: its workflow histories, transcript, lineage, events and feedback.
    An audit entry (who, when, which id; no content) remains. Admin, or its client when allowed."""
    if not (principal.allows("admin") or settings.clients_may_erase):
        raise ApiError("forbidden", "erasing a conversation needs the admin scope")
    await require_owner(engine, temporal, principal, conversation_id)
    async with temporal_errors(conversation_id):
        erased = await erasure.erase_conversation(
            temporal, engine, _key(principal, conversation_id), actor=principal.subject, reason="requested"
        )
    if not erased:
        raise not_found(conversation_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


ConversationStatusFilter = Literal["active", "ended"] | None
IntentFilter = Annotated[
    str | None, Query(max_length=100, description="Only those whose last intent is this.")
]
DegradedFilter = Annotated[
    bool | None, Query(description="Only those with (true) or without (false) a degraded answer.")
]
IdFilter = Annotated[str | None, Query(max_length=200, description="Only those whose id contains this.")]
PageLimit = Annotated[int, Query(ge=1, le=200)]
PageOffset = Annotated[int, Query(ge=0, le=MAX_OFFSET)]


@dataclass
class ConversationFilters:
    """The query of a list of conversations: what to keep, and which page."""

    status: ConversationStatusFilter = None
    intent: IntentFilter = None
    degraded: DegradedFilter = None
    q: IdFilter = None
    limit: PageLimit = 50
    offset: PageOffset = 0


FiltersDep = Annotated[ConversationFilters, Depends()]


@router.get("")
async def read_conversations(
    engine: EngineDep, principal: ClientPrincipal, filters: FiltersDep
) -> ConversationsPage:
    """Conversations, most recently updated first (an end user's token: their own)."""
    return await conversations_page(engine, principal, principal.user, filters)


async def conversations_page(
    engine: Engine,
    principal: Principal,
    user: str | None,
    filters: ConversationFilters,
) -> ConversationsPage:
    """A page of the caller's tenant's conversations (of end user `user` only, when given)."""
    rows, total = await run_in_threadpool(
        store.list_conversations,
        engine,
        tenant=principal.tenant,
        user=user,
        status=filters.status,
        intent=filters.intent or None,
        degraded=filters.degraded,
        contains=filters.q or None,
        limit=filters.limit,
        offset=filters.offset,
    )
    prefix = len(_key(principal, ""))
    items = [
        ConversationSummary.model_validate(
            row.model_dump()
            | {
                "conversation_id": row.id[prefix:],
                "tenant": principal.tenant,
                "degraded_count": degraded_count,
            }
        )
        for row, degraded_count in rows
    ]
    return ConversationsPage(items=items, total=total, limit=filters.limit, offset=filters.offset)


async def settle(start: WithStartWorkflowOperation[Any, Any]) -> None:
    """Collect the start operation's outcome after a cancelled call, so it is not reported as never retrieved."""
    waiter = asyncio.ensure_future(start.workflow_handle())
    await asyncio.wait({waiter}, timeout=0.1)
    if not waiter.done():
        waiter.cancel()
    elif not waiter.cancelled():
        waiter.exception()


async def _refuse_if_ended(engine: EngineDep, principal: Principal, conversation_id: str) -> None:
    """409 for a conversation the store knows as ended (or erased); 404 for an end user when the store
    knows it as another user's (the workflow refuses their turn all the same: this only tells no more).

    Temporal refuses to start an ended conversation's workflow id again only while it
    keeps the closed run (the namespace's retention); the store remembers for good.
    The store is not a hard dependency of a turn: when it cannot be read, Temporal alone
    decides (it still refuses an ended conversation it keeps).
    """
    key = _key(principal, conversation_id)
    try:
        status = await run_in_threadpool(store.conversation_status, engine, key)
        if (
            status is not None
            and principal.user is not None
            and not principal.may_use(await run_in_threadpool(store.owner, engine, key))
        ):
            raise not_found(conversation_id)
    except SQLAlchemyError as err:
        log.warning("store unavailable; conversation %s checked by Temporal alone: %s", conversation_id, err)
        return
    if status is not None and status != "active":
        raise conversation_ended(conversation_id)


def _stream_slot(request: Request, principal: Principal) -> Callable[[], None]:
    """A slot for one more event stream of the caller (429 `too_many_streams` past its key's or tenant's
    cap), and what gives it back when the stream is over."""
    slots: StreamSlots = request.app.state.stream_slots
    return slots.take(subject=principal.subject, tenant=principal.tenant)


def _key(principal: Principal, conversation_id: str) -> str:
    """The conversation of the caller's tenant: another tenant's ids are never reached."""
    return conversation_key(principal.tenant, conversation_id)


async def turn_result(temporal: TemporalClientDep, key: str, turn_id: str) -> TurnReply:
    """A turn's reply, waiting for it; from the workflow's recent turns when an earlier run answered it
    (Temporal finds an update only in the run it was sent to, and the conversation may have continued)."""
    handle = _handle(temporal, key)
    try:
        reply: TurnReply = await handle.get_update_handle(turn_id, result_type=TurnReply).result()
        return reply
    except RPCError as err:
        if err.status != RPCStatusCode.NOT_FOUND:
            raise
        earlier: TurnReply | None = await handle.query(
            Queries.RECENT_TURN, turn_id, result_type=TurnReply, rpc_timeout=QUERY_TIMEOUT
        )
        if earlier is None:
            raise
        return earlier


def require_flag(
    policies: BotPolicies, principal: Principal, conversation_id: str, flag: Flag
) -> dict[str, bool]:
    """The conversation's flags; 409 `feature_disabled` when `flag` is off for it."""
    flags = policies.evaluate(_key(principal, conversation_id))
    if not flags[flag]:
        raise ApiError("feature_disabled", f"{flag} is switched off for conversation {conversation_id!r}")
    return flags


def _handle(temporal: TemporalClientDep, key: str) -> WorkflowHandle[Any, Any]:
    return temporal.get_workflow_handle(workflow_id(key))


async def execute_update(
    temporal: TemporalClientDep,
    settings: SettingsDep,
    principal: Principal,
    conversation_id: str,
    update: str,
    body: Any,
    idempotency_key: str | None,
    result_type: type[R],
) -> R:
    """Run an update of the conversation's workflow (a person's action, a decision on an approval), bounded
    like a turn; the same idempotency key again is the same update, run once."""
    key = conversation_key(principal.tenant, conversation_id)
    handle = temporal.get_workflow_handle(workflow_id(key))
    async with temporal_errors(conversation_id, temporal=temporal, key=key):
        try:
            # It waits for the turn in progress, if any: bounded like a turn.
            return await asyncio.wait_for(
                # The same key again (a retry after a time-out) is the same update: it runs once. Named
                # after the update (with a space, which no key has) so that no other update nor a turn,
                # whose id is its key, can share it.
                handle.execute_update(
                    update,
                    body,
                    id=f"{update} {idempotency_key}" if idempotency_key else None,
                    result_type=result_type,
                ),
                timeout=settings.turn_timeout_seconds,
            )
        except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError):
            # The SDK reports the cancelled call as its own error rather than the time-out.
            raise ApiError("update_timeout", "the conversation is busy; retry shortly") from None
