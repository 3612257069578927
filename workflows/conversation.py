"""`ConversationWorkflow`: one durable workflow per conversation.

Turns arrive as the `turn` update and run one at a time, in arrival order. Each turn
understands the text and searches the knowledge base side by side, then generates
the reply and records it. A step that fails after its retries gives a fallback
instead of an error: the user gets an answer marked `degraded`, and the
conversation stays healthy for the next turn.

A person can take the conversation over (`handoff`), answer through `agent_message`,
and give it back (`handback`); these run in the same order as turns. After
`turns_per_run` messages the run continues as new with a compact state, so a
conversation of any length keeps a small history.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, NamedTuple, TypeVar, overload

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError, FailureError

with workflow.unsafe.imports_passed_through():
    from activities.agent import AgentActivity
    from activities.generate import GenerateActivity
    from activities.record import RecordActivities
    from activities.respond import RespondActivity
    from activities.retrieve import RetrieveActivity
    from activities.rewrite import RewriteActivity
    from activities.summarize import SummarizeActivity
    from activities.tools import ToolActivity
    from activities.understand import UnderstandActivity
    from dialogue.agent.tools import arguments_digest
    from dialogue.contracts import (
        APPROVAL_DECIDED,
        APPROVAL_FORBIDDEN,
        CONVERSATION_ENDED,
        INVALID_TURN,
        NO_SUCH_APPROVAL,
        NOT_HANDED_OFF,
        OUT_OF_SCOPE,
        QUEUE_FULL,
        STORE_BEHIND,
        TURN_IN_PROGRESS,
        UNRECORDABLE,
        AgentMessageReply,
        AgentMessageRequest,
        AgentStepRecord,
        AgentStepRequest,
        AgentToolCall,
        AgentToolOutcome,
        ApprovalDecision,
        ApprovalReply,
        ApprovalRequest,
        CarriedState,
        ContextRequest,
        ConversationInput,
        ConversationState,
        Decision,
        DialogueState,
        DocumentRef,
        EndRequest,
        GenerateRequest,
        HandbackRequest,
        HandoffRequest,
        Holder,
        IntentPrediction,
        Lineage,
        ModelCall,
        NluResult,
        ParkedAgent,
        Passage,
        PendingApproval,
        RecordConversationRequest,
        RecordMessageRequest,
        RecordTurnRequest,
        Reply,
        RespondedHere,
        RespondHereRequest,
        RetrieveRequest,
        RetrieveResult,
        RewriteRequest,
        StreamTarget,
        SummarizeRequest,
        ToolResult,
        TurnReply,
        TurnRequest,
        Understanding,
        UnderstandRequest,
    )
    from dialogue.llm.followup import is_follow_up
    from dialogue.metrics import APPROVAL_DECISIONS, TURN_QUEUE_DEPTH
    from dialogue.temporal import DEGRADED_COUNT, HANDOFF, LAST_INTENT, STATUS, TENANT, TURN_COUNT

T = TypeVar("T")
A = TypeVar("A")
S = TypeVar("S")


FALLBACK_TEXT = "Sorry, I can't answer that right now. Please try again in a moment."
NOT_RUN = "none"
"""The intent of a turn the bot did not run: interrupted, or answered by a person."""
TURN_DEADLINE_PATCH = "turn-deadline"
CONTINUE_AS_NEW_PATCH = "continue-as-new"
HOLD_PATCH = "handoff-holds-conversation"
"""Since this patch, a handoff pauses the bot until handback (before, it only set a flag)."""
LOCAL_STEPS_PATCH = "local-steps"
"""Since this patch, the steps that take milliseconds on the worker (understand, retrieve, a reply made
without a model, record_turn) are local activities: they run inside the turn's workflow task, each
saving a round trip through the server's task queue (~18 ms a step on the embedded dev server,
bench/turn_latency.py). A reply from an LLM stays the regular `generate` activity."""
LEAN_TURN_PATCH = "lean-turn"
"""Since this patch, a turn costs the server less work: retrieval runs after `understand`, and only when
the reply is made from the knowledge base (not for a greeting or a flow's question), taking the utterance's
vector that `understand` computed; one idle timer runs per quiet spell, not one re-armed at every turn
(two timer commands fewer a turn); a new conversation's index row is written inline by a local activity
like the turns' (a regular activity cost a round trip through the server's task queue)."""
ONE_LOCAL_STEP_PATCH = "one-local-step"
"""Since this patch, a turn's understanding, retrieval and reply (when made without a tool, the agent or a
model) are one local activity, `respond_here`, instead of three: two local-activity round trips and two
workflow activations fewer a turn. If it fails, the turn runs the steps one by one, as before."""
QUERY_REWRITE_PATCH = "llm-query-rewrite"
"""Since this patch, a follow-up may be made standalone by the `rewrite_query` activity before retrieval."""
RECENT_TURNS = 20
"""Replies a run remembers and hands over: a turn retried across continue-as-new gets its reply back.
Twice the longest queue, so that a queued turn that timed out at the API can still be collected."""
MAX_UNRECORDED = 20
"""Transcript writes a conversation keeps waiting for the store at most. Beyond, turns and a person's
messages are refused (503 with `Retry-After`) rather than growing the workflow's state without bound."""


class _Outcome(NamedTuple):
    nlu: NluResult
    decision: Decision | None
    tool_result: ToolResult | None
    reply: Reply
    query: str | None = None
    """What retrieval searched with, when the message was a follow-up made standalone."""
    agent: list[AgentStepRecord] | None = None
    """An agent's steps that called tools."""
    parked: ParkedAgent | None = None
    """The agent waits for approvals of calls it asked for: the reply says so."""
    agent_answer: ModelCall | None = None


class _AgentRun(NamedTuple):
    """Where an agent's loop stopped: its answer, or the step whose calls wait for approval."""

    reply: Reply
    steps: list[AgentStepRecord]
    waiting: AgentStepRecord | None = None
    pending: list[PendingApproval] = []
    answer: ModelCall | None = None
    """The model call that wrote the answer."""


def _step(
    timeout_s: float, total_s: float, attempts: int, heartbeat_s: float | None = None
) -> dict[str, Any]:
    """Activity options: each attempt bounded, retries with exponential backoff, the whole bounded too."""
    return {
        **({"heartbeat_timeout": timedelta(seconds=heartbeat_s)} if heartbeat_s else {}),
        "start_to_close_timeout": timedelta(seconds=timeout_s),
        "schedule_to_close_timeout": timedelta(seconds=total_s),
        "retry_policy": RetryPolicy(
            initial_interval=timedelta(milliseconds=200),
            backoff_coefficient=2.0,
            maximum_interval=timedelta(seconds=2),
            maximum_attempts=attempts,
        ),
    }


# The rule: a step the user waits for is bounded, and its failure is a degraded reply; a step whose
# effect must happen (recording) is never given up, and its failure never reaches the user or ends the
# conversation. Nothing the workflow awaits may fail the workflow.
#
# Turn steps: each attempt bounded, the whole step too, and never past the turn's deadline
# (`_within_deadline`): past it the user gets the fallback, marked `degraded`.
UNDERSTAND = _step(timeout_s=5, total_s=10, attempts=3)
RETRIEVE = _step(timeout_s=5, total_s=10, attempts=3)
# Generation heartbeats: a lost worker is noticed in seconds, and a cancellation (deadline, interrupt)
# reaches the LLM call instead of letting it run on.
GENERATE = _step(timeout_s=20, total_s=30, attempts=3, heartbeat_s=5)
COMPOSE = _step(timeout_s=5, total_s=10, attempts=3)
RESPOND_HERE = _step(timeout_s=10, total_s=15, attempts=2)
TOOL = _step(timeout_s=10, total_s=20, attempts=3)
# Folding older turns into the rolling summary: an LLM call like generate's, but after the reply, never in
# the user's way. Failing after its retries leaves the verbatim window (older turns dropped, noted in lineage).
SUMMARIZE = _step(timeout_s=20, total_s=30, attempts=3)
# One model step of the agent: an LLM call like generate's, within the turn's deadline. A tool call's options
# come from its declaration (timeout, attempts), cut to the deadline too.
AGENT_STEP = _step(timeout_s=20, total_s=30, attempts=3, heartbeat_s=5)
LIST_MCP_TOOLS = _step(timeout_s=15, total_s=15, attempts=1)
MAX_AGENT_STEPS = 50
AGENT_PASSAGES = 3
AGENT_PASSAGE_CHARS = 1200
"""What of the turn's retrieval the agent's model sees (and each step's request carries through history)."""
"""The loop's own guard; the bot's `agent.max_steps` (enforced by `agent_step`) comes first."""
# Making a follow-up standalone with the LLM, before retrieval: short; failing, the heuristic stands in.
REWRITE = _step(timeout_s=5, total_s=8, attempts=2)
# Recording, inside the turn: one try, bounded just above SQLite's busy timeout (dialogue/db.py). A write the
# store cannot take now is kept in the workflow's state and written later (`_record_later`): the reply
# does not wait for the store, and is not degraded for it.
RECORD_INLINE = _step(timeout_s=11, total_s=11, attempts=1)
# Recording later, and the conversation's own row at its start and end: retried until the store takes it,
# backing off to one try every 30 s. No schedule-to-close: an outage of the store or of every worker,
# however long, only delays the transcript. Each attempt is bounded, so a worker that dies mid-write
# hands the write to another.
RECORD_UNTIL_DONE: dict[str, Any] = {
    "start_to_close_timeout": timedelta(seconds=15),
    "retry_policy": RetryPolicy(
        initial_interval=timedelta(milliseconds=500),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(seconds=30),
        maximum_attempts=0,  # unlimited
        non_retryable_error_types=[UNRECORDABLE],
    ),
}


class _Write(NamedTuple):
    """A write to the store's read side that must happen: the record activity and its request."""

    activity: Callable[..., Any]
    request: RecordTurnRequest | RecordMessageRequest | RecordConversationRequest
    local: bool = False
    """Inline as a local activity (record_turn, since the local-steps patch) rather than a regular one."""


@workflow.defn
class ConversationWorkflow:
    @workflow.init
    def __init__(self, input: ConversationInput) -> None:
        now = workflow.now()
        self._input = input
        if input.carried is not None:
            self._state = input.carried.state.model_copy(update={"run": input.carried.state.run + 1})
            self._recent = {reply.turn_id: reply for reply in input.carried.recent_turns}
            self._parked = {parked.turn_id: parked for parked in input.carried.parked}
        else:
            self._state = ConversationState(
                conversation_id=input.conversation_id, started_at=now, updated_at=now, slots=dict(input.slots)
            )
            self._recent = {}
            self._parked = {}
        self._resuming = 0
        self._waiting: dict[str, asyncio.Future[None]] = {}
        """Per agent waiting for approvals: the task that lets it go on once they are decided."""
        """Agents whose approvals are decided and that are going on: the run ends only after them."""
        self._resumed: dict[str, TurnReply | None] = {}
        """Answers of agents that went on after approvals, by their turn id, for the `approve` that waits
        for one (None: the conversation ended first, the agent did not go on)."""
        # asyncio.Lock is FIFO: turns (and a person's messages) that wait for it run in arrival order.
        self._turn_lock = asyncio.Lock()
        self._in_flight = 0
        self._running_turn: str | None = None
        self._touched = False
        self._last_touch = datetime.min.replace(tzinfo=UTC)
        """When the conversation's quiet spell began (set from the workflow's clock in `run`)."""
        self._messages_this_run = 0
        self._arrivals = 0
        """Turns that arrived in this run, counted when they arrive: the newest wins under `interrupt`."""
        self._responding: asyncio.Task[_Outcome] | None = None
        self._interrupted = False
        self._unrecorded: list[_Write] = []
        """Writes the store could not take when they were made, oldest first (see `_record`)."""
        self._recorder: asyncio.Future[None] | None = None
        self._summarizing: asyncio.Future[None] | None = None
        # Replay-safe (nothing is recorded while replaying): how many turns wait ahead of a new one.
        self._queue_depth = (
            workflow.metric_meter()
            .with_additional_attributes({"policy": input.double_text})
            .create_histogram(TURN_QUEUE_DEPTH, "Turns running or waiting ahead of a new turn.", "turns")
        )
        self._approval_decisions = workflow.metric_meter().create_counter(
            APPROVAL_DECISIONS, "Decisions on tool calls that waited for approval.", "decisions"
        )

    @workflow.run
    async def run(self, input: ConversationInput) -> ConversationState:
        # Runs recorded before continue-as-new existed replay without it.
        can_continue = workflow.patched(CONTINUE_AS_NEW_PATCH)
        workflow.upsert_search_attributes(
            [
                STATUS.value_set("active"),
                TENANT.value_set(input.tenant),
                DEGRADED_COUNT.value_set(self._state.degraded_count),
                HANDOFF.value_set(self._state.held_by == "agent"),
            ]
        )
        lean = workflow.patched(LEAN_TURN_PATCH)
        self._last_touch = workflow.now()
        if input.carried is not None:
            workflow.set_current_details(self._details())
        elif lean:
            await self._record(
                _Write(RecordActivities.record_conversation, self._record_request(), local=True)
            )
        else:
            await _record_until_done(_Write(RecordActivities.record_conversation, self._record_request()))
        for parked in self._parked.values():  # carried over: they wait on, their timeouts still running
            self._watch(parked)
        idle = timedelta(seconds=input.idle_timeout_seconds)

        def time_to_continue() -> bool:
            return can_continue and (
                self._messages_this_run >= input.turns_per_run
                or workflow.info().is_continue_as_new_suggested()
            )

        while self._state.status == "active" and not time_to_continue():
            if lean:
                await self._wait_while_active(idle, time_to_continue)
                continue
            self._touched = False
            try:
                await workflow.wait_condition(
                    lambda: self._touched or self._state.status != "active", timeout=idle
                )
            except TimeoutError:
                if self._in_flight == 0 and not self._parked:  # approvals time out on their own
                    self._close("idle_timeout")
        # Turns accepted before the end (or before continuing) still get their replies, in this run, and
        # the transcript has every message before the run ends: the next run starts with nothing owed.
        await workflow.wait_condition(
            lambda: (
                workflow.all_handlers_finished()
                and self._recorded()
                and self._summarizing is None
                and self._resuming == 0
            )
        )
        if self._state.status == "active":
            workflow.continue_as_new(
                input.model_copy(
                    update={
                        "carried": CarriedState(
                            state=self._state,
                            recent_turns=list(self._recent.values()),
                            parked=list(self._parked.values()),
                        )
                    }
                )
            )
        await _record_until_done(_Write(RecordActivities.record_conversation, self._record_request()))
        return self._state

    @workflow.update
    async def turn(self, request: TurnRequest) -> TurnReply:
        turn_id = _update_id()
        answered = self._recent.get(turn_id)
        if answered is not None:
            return answered  # retried after its run continued as new: the same reply, no second turn
        self._arrivals += 1
        arrival = self._arrivals
        self._queue_depth.record(self._in_flight)
        if self._input.double_text == "interrupt" and self._responding is not None:
            self._interrupted = True
            self._responding.cancel()

        async def run_turn() -> TurnReply:
            if self._input.double_text == "interrupt" and self._arrivals > arrival:
                # A newer turn arrived while this one waited: it would be interrupted at once.
                return await self._answer_without_bot(turn_id, request, interrupted=True)
            self._running_turn = turn_id
            try:
                return await self._run_turn(turn_id, request)
            finally:
                self._running_turn = None

        reply = await self._in_order(run_turn)
        self._recent[turn_id] = reply
        while len(self._recent) > RECENT_TURNS:
            del self._recent[next(iter(self._recent))]
        return reply

    @turn.validator
    def validate_turn(self, request: TurnRequest) -> None:
        # Raising here rejects the update before it enters history.
        if _update_id() in self._recent:
            return  # answered already: the handler gives the same reply
        self._refuse_if_ended()
        self._check_text(request.text)
        self._refuse_if_store_behind()
        if self._input.double_text == "reject" and self._in_flight:
            raise ApplicationError(
                f"turn {self._running_turn} is still running", self._running_turn, type=TURN_IN_PROGRESS
            )
        if self._in_flight >= self._input.max_queued_turns:
            raise ApplicationError(f"{self._in_flight} turns are already waiting", type=QUEUE_FULL)

    @workflow.update
    async def handoff(self, request: HandoffRequest) -> ConversationState:
        """A person takes the conversation over: the bot stops answering until `handback`."""
        return await self._in_order(lambda: self._hand_over("agent", request.agent, request.reason))

    @handoff.validator
    def validate_handoff(self, request: HandoffRequest) -> None:
        self._refuse_if_ended()
        self._refuse_if_store_behind()

    @workflow.update
    async def handback(self, request: HandbackRequest) -> ConversationState:
        """The bot answers the user's turns again."""
        return await self._in_order(lambda: self._hand_over("bot", request.agent, "handed back"))

    @handback.validator
    def validate_handback(self, request: HandbackRequest) -> None:
        self._refuse_if_ended()
        self._refuse_if_store_behind()

    @workflow.update
    async def agent_message(self, request: AgentMessageRequest) -> AgentMessageReply:
        """A person's reply to the user, recorded in the transcript and sent to stream clients."""

        async def post() -> AgentMessageReply:
            index = self._take_index()
            await self._record_message(index, "agent", request.text.strip(), request.agent, "agent_message")
            return AgentMessageReply(
                conversation_id=self._input.conversation_id,
                turn_index=index,
                agent=request.agent,
                at=self._state.updated_at,
            )

        return await self._in_order(post)

    @agent_message.validator
    def validate_agent_message(self, request: AgentMessageRequest) -> None:
        self._refuse_if_ended()
        self._check_text(request.text)
        self._refuse_if_store_behind()
        if self._state.held_by != "agent":
            raise ApplicationError("the bot holds this conversation: hand it off first", type=NOT_HANDED_OFF)

    @workflow.update
    async def approve(self, request: ApprovalRequest) -> ApprovalReply:
        """A decision on a tool call that waits for approval. Once every call its turn's agent waits for is
        decided, the agent goes on (approved calls run, denied ones are the model's to read) and the
        update answers with what the agent then said."""
        parked = self._parked_with(request.call_id)
        assert parked is not None  # the validator made sure
        parked.decisions[request.call_id] = ApprovalDecision(
            approved=request.approve,
            by=request.by,
            role="agent" if request.as_agent else "user",
            note=request.note,
            at=workflow.now(),
        )
        self._show_pending()
        reply = ApprovalReply(
            conversation_id=self._input.conversation_id, call_id=request.call_id, approved=request.approve
        )
        if not _decided(parked):
            return reply.model_copy(
                update={"pending": [p for p in parked.pending if p.call_id not in parked.decisions]}
            )
        going_on = _resumption_id(parked)
        await workflow.wait_condition(lambda: going_on in self._resumed)
        return reply.model_copy(update={"reply": self._resumed[going_on]})

    @approve.validator
    def validate_approve(self, request: ApprovalRequest) -> None:
        self._refuse_if_ended()
        parked = self._parked_with(request.call_id)
        if parked is None:
            raise ApplicationError(
                f"no tool call {request.call_id!r} waits for approval", type=NO_SUCH_APPROVAL
            )
        if request.call_id in parked.decisions:
            raise ApplicationError(f"tool call {request.call_id!r} is decided already", type=APPROVAL_DECIDED)
        pending = next(p for p in parked.pending if p.call_id == request.call_id)
        if pending.approval == "agent" and not request.as_agent:
            raise ApplicationError(
                f"{pending.name} needs a person's approval (a key with the agent scope)",
                type=APPROVAL_FORBIDDEN,
            )

    @workflow.query
    def state(self) -> ConversationState:
        return self._state

    @workflow.query
    def recent_turn(self, turn_id: str) -> TurnReply | None:
        """A recent turn's reply, also one answered by an earlier run (whose updates Temporal no longer finds)."""
        return self._recent.get(turn_id)

    @workflow.signal
    def end(self, request: EndRequest) -> None:
        if self._state.status == "active":
            self._close(request.reason)

    def _refuse_if_ended(self) -> None:
        if self._state.status != "active":
            raise ApplicationError("the conversation has ended", type=CONVERSATION_ENDED)

    def _refuse_if_store_behind(self) -> None:
        if len(self._unrecorded) >= MAX_UNRECORDED:
            raise ApplicationError(
                f"{len(self._unrecorded)} messages are waiting for the store to record them; retry shortly",
                type=STORE_BEHIND,
            )

    def _check_text(self, text: str) -> None:
        if not text.strip():
            raise ApplicationError("text must not be empty", type=INVALID_TURN)
        if len(text) > self._input.max_text_chars:
            raise ApplicationError(
                f"text is longer than {self._input.max_text_chars} characters", type=INVALID_TURN
            )

    async def _wait_while_active(self, idle: timedelta, time_to_continue: Callable[[], bool]) -> None:
        """Wait until the conversation ends, it is time to continue as new, or it has been quiet for `idle`
        (then it ends, unless a turn is running or an approval is awaited). One timer per quiet spell: a
        turn moves the time the spell started, not the timer, which on firing waits out what is left."""
        left = idle - (workflow.now() - self._last_touch)
        if left <= timedelta(0):
            if self._in_flight == 0 and not self._parked:  # approvals time out on their own
                self._close("idle_timeout")
                return
            left = idle
        with contextlib.suppress(TimeoutError):  # the loop looks again at how long it has been quiet
            await workflow.wait_condition(
                lambda: self._state.status != "active" or time_to_continue(), timeout=left
            )

    async def _in_order(self, work: Callable[[], Awaitable[T]]) -> T:
        """Run a turn or a person's action after those that arrived before it, one at a time."""
        self._in_flight += 1
        self._touch()
        try:
            async with self._turn_lock:
                result = await work()
                self._messages_this_run += 1
                return result
        finally:
            self._in_flight -= 1
            self._touch()

    def _touch(self) -> None:
        """Something happened: the conversation's quiet spell (its idle timeout) starts again now."""
        self._touched = True
        self._last_touch = workflow.now()

    def _take_index(self) -> int:
        """The next place in the transcript: user turns, a person's messages and handoffs share one order."""
        index = self._state.turn_count
        self._state.turn_count = index + 1
        self._state.updated_at = workflow.now()
        return index

    def _close(self, reason: str) -> None:
        if self._state.status == "ended":
            return  # the first reason stands
        self._state.status = "ended"
        self._state.ended_reason = reason
        self._state.updated_at = workflow.now()
        workflow.set_current_details(self._details())
        workflow.upsert_search_attributes([STATUS.value_set("ended")])

    async def _hand_over(self, holder: Holder, agent: str | None, reason: str) -> ConversationState:
        if self._state.held_by == holder:
            return self._state  # already there: handing over twice changes nothing
        self._state.held_by = holder
        self._state.handoff = holder == "agent"
        self._state.agent = agent if holder == "agent" else None
        who = agent or "a person"
        text = f"Handed off to {who} ({reason})." if holder == "agent" else f"{who} handed back to the bot."
        await self._record_message(
            self._take_index(), "system", text, agent, "handoff" if holder == "agent" else "handback"
        )
        return self._state

    async def _record_message(
        self,
        index: int,
        role: Literal["agent", "system"],
        text: str,
        author: str | None,
        event: Literal["agent_message", "handoff", "handback"],
    ) -> None:
        workflow.set_current_details(self._details())
        workflow.upsert_search_attributes(
            [TURN_COUNT.value_set(self._state.turn_count), HANDOFF.value_set(self._state.held_by == "agent")]
        )
        await self._record(
            _Write(
                RecordActivities.record_message,
                RecordMessageRequest(
                    conversation_id=self._input.key,
                    turn_id=f"{event}-{index}",
                    turn_index=index,
                    role=role,
                    text=text,
                    author=author,
                    at=self._state.updated_at,
                    event=event,
                ),
            )
        )

    async def _answer_without_bot(
        self, turn_id: str, request: TurnRequest, *, interrupted: bool
    ) -> TurnReply:
        """A turn the bot does not answer (interrupted, or a person holds the conversation): recorded all the same."""
        index = self._take_index()
        text = request.text.strip()
        nlu = NluResult(intent=IntentPrediction(name=NOT_RUN, confidence=0.0))
        workflow.set_current_details(self._details())
        await self._record(
            _Write(
                RecordActivities.record_turn,
                RecordTurnRequest(
                    conversation_id=self._input.key,
                    turn_id=turn_id,
                    turn_index=index,
                    user_text=text,
                    reply=None,
                    nlu=nlu,
                    at=self._state.updated_at,
                ),
                local=workflow.patched(LOCAL_STEPS_PATCH),
            )
        )
        return TurnReply(
            conversation_id=self._input.conversation_id,
            turn_id=turn_id,
            turn_index=index,
            reply=Reply(text="", generator=NOT_RUN),
            nlu=nlu,
            interrupted=interrupted,
            held_by=self._state.held_by,
            user_text=text,
        )

    async def _run_turn(self, turn_id: str, request: TurnRequest) -> TurnReply:
        if self._state.held_by == "agent":
            if request.flags.get("handoff", True):
                return await self._answer_without_bot(turn_id, request, interrupted=False)
            # Handoff was switched off while a person held the conversation, and no person may answer
            # now: the bot takes it back rather than leave the user waiting for no one.
            await self._hand_over("bot", None, "handoff switched off")
        turn_index = self._state.turn_count
        text = request.text.strip()
        timings: dict[str, float] = {}
        failed: list[str] = []
        started = workflow.time()
        stream = StreamTarget(conversation_id=self._input.key, turn_id=turn_id) if request.stream else None

        # A task, so that a newer turn can cancel it under the `interrupt` policy.
        self._interrupted = False
        self._responding = asyncio.ensure_future(
            self._respond(text, turn_id, turn_index, timings, failed, stream, request.flags)
        )
        try:
            if workflow.patched(TURN_DEADLINE_PATCH):
                try:
                    # Past the deadline the steps still running are cancelled and the user gets the fallback.
                    outcome = await asyncio.wait_for(
                        self._responding, timeout=self._input.turn_deadline_seconds
                    )
                except TimeoutError:
                    failed.append("deadline exceeded")
                    outcome = _Outcome(_not_understood(), None, None, Reply(text=FALLBACK_TEXT))
            else:  # conversations started before the deadline existed replay without its timer
                outcome = await self._responding
        except asyncio.CancelledError:
            if not self._interrupted:
                raise  # the workflow itself is being cancelled
            return await self._answer_without_bot(turn_id, request, interrupted=True)
        finally:
            self._responding = None
        nlu, decision, tool_result, reply, query, agent_steps, parked, agent_answer = outcome
        # A follow-up the NLU could not place is about the topic it continues ("and to Austria?").
        topic = decision.topic if decision is not None and decision.topic else nlu.intent.name

        self._state.turn_count = turn_index + 1
        self._state.last_intent = topic
        self._state.intent_counts[topic] = self._state.intent_counts.get(topic, 0) + 1
        self._state.last_action = decision.action if decision is not None else None
        self._state.last_query = query or text
        if failed:
            self._state.degraded_count += 1
        if decision is not None:
            self._apply(decision, tool_result)
        self._state.updated_at = workflow.now()
        workflow.set_current_details(self._details())
        workflow.upsert_search_attributes(
            [
                LAST_INTENT.value_set(topic),
                TURN_COUNT.value_set(self._state.turn_count),
                DEGRADED_COUNT.value_set(self._state.degraded_count),
            ]
        )
        lineage = Lineage(
            nlu_model=nlu.model,
            generator=reply.generator,
            prompt_id=reply.prompt_id,
            prompt_hash=reply.prompt_hash,
            documents=[
                DocumentRef(
                    document_id=s.document_id, version=s.document_version, chunk_id=s.chunk_id, score=s.score
                )
                for s in reply.sources
            ],
            # `total`: until the reply was ready (the turn's own total, in its reply, adds the recording).
            timings_ms=dict(timings) | {"total": _ms(workflow.time() - started)},
            degraded_reason=", ".join(failed) or None,
            flags=dict(request.flags),
            context=reply.context.model_copy(update={"retrieval_query": query}) if reply.context else None,
            data=reply.data,
            retrieval_query=query,
            agent=agent_steps,
            agent_answer=agent_answer,
            action=decision.action if decision is not None else None,
        )
        reply = reply.model_copy(update={"context": None})  # the lineage has it: once in history is enough
        record = RecordTurnRequest(
            conversation_id=self._input.key,
            turn_id=turn_id,
            turn_index=turn_index,
            user_text=text,
            reply=reply,
            nlu=nlu,
            degraded=bool(failed),
            at=self._state.updated_at,
            lineage=lineage,
        )
        recording = workflow.time()
        await self._record(
            _Write(RecordActivities.record_turn, record, local=workflow.patched(LOCAL_STEPS_PATCH))
        )
        timings["record"] = _ms(workflow.time() - recording)
        if parked is not None:
            self._park(parked)
        if lineage.context is not None and lineage.context.dropped and self._summarizing is None:
            # Turns no longer fit the budget: fold them into the summary, after the reply, for the next turns;
            # with the older half of those that still fit, so that the next fold is many turns away (a full
            # window would otherwise overflow, and call the model to fold, at every turn).
            sent = lineage.context.turns
            through = max(max(lineage.context.dropped) + 1, sent[len(sent) // 2] if sent else 0)
            self._summarizing = asyncio.ensure_future(self._summarize(through, request))
        if decision is not None and decision.action == "handoff" and workflow.patched(HOLD_PATCH):
            await self._hand_over("agent", None, "the user asked for a person")
        timings["total"] = _ms(workflow.time() - started)
        if decision is not None and decision.action == "end":
            self._close("ended_by_user")
        return TurnReply(
            conversation_id=self._input.conversation_id,
            turn_id=turn_id,
            turn_index=turn_index,
            reply=reply,
            nlu=nlu,
            degraded=bool(failed),
            degraded_reason=", ".join(failed) or None,
            timings_ms=timings,
            lineage=lineage,
            held_by=self._state.held_by,
            user_text=text,
            approvals=parked.pending if parked is not None else [],
        )

    async def _respond(
        self,
        text: str,
        turn_id: str,
        turn_index: int,
        timings: dict[str, float],
        failed: list[str],
        stream: StreamTarget | None,
        flags: dict[str, bool],
    ) -> _Outcome:
        """The steps of a turn up to its reply: understand and retrieve, the flow's tool, generate."""
        local = workflow.patched(LOCAL_STEPS_PATCH)
        here = None
        if (
            local
            and workflow.patched(LEAN_TURN_PATCH)
            and workflow.patched(ONE_LOCAL_STEP_PATCH)
            and not self._rewrite_wanted(text, flags)
        ):
            here = await self._respond_here(text, turn_index, timings, stream, flags)
        if here is not None:
            failed.extend(here.failed)
            understanding: Understanding | None = here.understanding
            retrieved: RetrieveResult | None = here.retrieved
        else:
            understanding, retrieved = await self._understand_and_retrieve(
                local, text, timings, failed, flags
            )
        nlu = understanding.nlu if understanding else _not_understood()
        decision = understanding.decision if understanding else None
        if decision is not None and decision.action == "handoff" and not flags.get("handoff", True):
            # No person may take over: the bot stays, and its fallback says what it can help with.
            decision = decision.model_copy(update={"action": "fallback"})
        passages: list[Passage] = retrieved.passages if retrieved else []
        query = retrieved.query if retrieved else None
        if here is not None and here.reply is not None and decision == here.understanding.decision:
            return _Outcome(nlu, decision, None, here.reply, query)
        tool_result = None
        if decision is not None and decision.tool is not None:
            tool_result = await self._attempt(
                "tool",
                workflow.execute_activity_method(
                    ToolActivity.run_tool, decision.tool, **self._within_deadline(TOOL)
                ),
                timings,
                failed,
            )
        if decision is not None and decision.action == "agent":
            request = self._agent_request(text, turn_id, turn_index, flags, stream, passages)
            run = await self._attempt("agent", self._agent(request, [], failed), timings, failed)
            if run is None:
                return _Outcome(nlu, decision, tool_result, Reply(text=FALLBACK_TEXT), query)
            if run.waiting is None:
                return _Outcome(
                    nlu, decision, tool_result, run.reply, query, run.steps, agent_answer=run.answer
                )
            parked = ParkedAgent(
                turn_id=turn_id,
                turn_index=turn_index,
                text=text,
                nlu=nlu,
                passages=passages,
                flags=flags,
                streamed=stream is not None,
                steps=run.steps,
                waiting=run.waiting,
                pending=run.pending,
            )
            return _Outcome(nlu, decision, tool_result, run.reply, query, [*run.steps, run.waiting], parked)
        # A reply `respond_here` tried to compose with this very request needs a model: straight to it.
        composed_here = here is not None and decision == here.understanding.decision and tool_result is None
        reply = await self._attempt(
            "generate",
            _generate(
                local and not composed_here,
                self._within_deadline(COMPOSE),
                self._within_deadline(GENERATE),
                self._generate_request(
                    text, turn_index, nlu, passages, decision, tool_result, stream, flags, query
                ),
            ),
            timings,
            failed,
        ) or Reply(text=FALLBACK_TEXT)

        return _Outcome(nlu, decision, tool_result, reply, query)

    async def _respond_here(
        self,
        text: str,
        turn_index: int,
        timings: dict[str, float],
        stream: StreamTarget | None,
        flags: dict[str, bool],
    ) -> RespondedHere | None:
        """Understanding, retrieval and (when it needs no tool, agent or model) the reply, in one local
        step; None if it failed, and the turn then takes the steps one by one, each with its fallback."""
        request = RespondHereRequest(
            understand=self._understand_request(text, flags),
            retrieve=RetrieveRequest(text=text, previous=self._previous_query()),
            generate=self._generate_request(
                text, turn_index, _not_understood(), [], None, None, stream, flags, None
            ),
        )
        not_counted: list[str] = []  # a failure here is not the turn's: the steps one by one come next
        here = await self._attempt(
            "respond_here",
            _run_step(True, RespondActivity.respond_here, request, self._within_deadline(RESPOND_HERE)),
            timings,
            not_counted,
        )
        if here is not None:
            timings.update(here.timings_ms)
        return here

    async def _understand_and_retrieve(
        self, local: bool, text: str, timings: dict[str, float], failed: list[str], flags: dict[str, bool]
    ) -> tuple[Understanding | None, RetrieveResult | None]:
        """The `understand` and `retrieve` steps, each on its own (with its own fallback)."""
        understand = self._attempt(
            "understand",
            _run_step(
                local,
                UnderstandActivity.understand,
                self._understand_request(text, flags),
                self._within_deadline(UNDERSTAND),
            ),
            timings,
            failed,
        )
        retrieved: RetrieveResult | None = None
        if local and workflow.patched(LEAN_TURN_PATCH):
            # Retrieval only for a reply made from the knowledge base (or when understanding failed and
            # the fallback may answer from it): after `understand`, whose utterance vector it reuses.
            understanding = await understand
            if understanding is None or understanding.needs_knowledge:
                retrieved = await self._attempt(
                    "retrieve", self._retrieve(local, text, flags, timings), timings, failed
                )
        else:
            # Retrieval does not depend on the intent: run it beside NLU and the policy, not after them.
            understanding, retrieved = await asyncio.gather(
                understand,
                self._attempt("retrieve", self._retrieve(local, text, flags, timings), timings, failed),
            )
        return understanding, retrieved

    def _understand_request(self, text: str, flags: dict[str, bool]) -> UnderstandRequest:
        return UnderstandRequest(text=text, dialogue=self._dialogue(), agent_mode=flags.get("agent", False))

    def _generate_request(
        self,
        text: str,
        turn_index: int,
        nlu: NluResult,
        passages: list[Passage],
        decision: Decision | None,
        tool_result: ToolResult | None,
        stream: StreamTarget | None,
        flags: dict[str, bool],
        query: str | None,
    ) -> GenerateRequest:
        return GenerateRequest(
            text=text,
            turn_index=turn_index,
            nlu=nlu,
            passages=passages,
            decision=decision,
            tool_result=tool_result,
            stream=stream,
            llm=flags.get("llm_generator"),
            redact=flags.get("redaction", True),
            context=ContextRequest(
                conversation_id=self._input.key,
                turn_index=turn_index,
                summary=self._state.rolling_summary,
                notes=["the last summary failed: older turns are left out"]
                if self._state.summary_failed
                else [],
            ),
            variant=flags.get("llm_variant", False),
            query=query,
        )

    async def _attempt(
        self, step: str, call: Awaitable[T], timings: dict[str, float], failed: list[str]
    ) -> T | None:
        """Run one step; on failure after its retries, note it and give None so the turn can fall back."""
        start = workflow.time()
        try:
            return await call
        except FailureError as err:
            # A regular activity's failure is an ActivityError around the cause; a local activity's may be
            # the cause itself (seen for a non-retryable error: the SDK's core does not always wrap it).
            cause = err.cause if isinstance(err, ActivityError) else err
            if isinstance(cause, CancelledError):
                # Cancelled by the turn's deadline, not failed: let the cancellation reach the deadline.
                raise asyncio.CancelledError from err
            workflow.logger.warning("step %s failed: %s", step, cause or err)
            failed.append(f"{step} failed")
            return None
        finally:
            timings[step] = _ms(workflow.time() - start)

    async def _record(self, write: _Write) -> None:
        """Write to the store now if it takes the write within RECORD_INLINE; otherwise keep the write and
        let `_record_later` make it. Never raises for the store: the user's reply neither waits for nor
        fails on it. While writes are waiting, new ones queue behind them, so the store gets them in order."""
        if not self._unrecorded:
            try:
                await _run_step(write.local, write.activity, write.request, RECORD_INLINE)
                return
            except FailureError as err:
                cause = err.cause if isinstance(err, ActivityError) else err
                if isinstance(cause, CancelledError):
                    raise asyncio.CancelledError from err
                workflow.logger.warning(
                    "the store did not take %s now; it is kept and written later: %s",
                    _activity_name(write),
                    cause or err,
                )
        self._unrecorded.append(write)
        self._state.unrecorded = len(self._unrecorded)
        workflow.set_current_details(self._details())
        if self._recorder is None:
            self._recorder = asyncio.ensure_future(self._record_later())

    def _recorded(self) -> bool:
        """Nothing is owed to the store. A recorder that died of a bug raises here: the workflow task fails
        and is retried (a fixed worker takes it over) instead of the conversation waiting for ever."""
        if self._recorder is not None and self._recorder.done() and not self._recorder.cancelled():
            self._recorder.result()
        return not self._unrecorded

    async def _record_later(self) -> None:
        """Make the writes the store could not take, oldest first, each until it succeeds."""
        while True:
            await workflow.wait_condition(lambda: bool(self._unrecorded))
            await _record_until_done(self._unrecorded[0])
            self._unrecorded.pop(0)
            self._state.unrecorded = len(self._unrecorded)
            workflow.set_current_details(self._details())

    def _agent_request(
        self,
        text: str,
        turn_id: str,
        turn_index: int,
        flags: dict[str, bool],
        stream: StreamTarget | None,
        passages: list[Passage],
    ) -> AgentStepRequest:
        return AgentStepRequest(
            passages=[
                p.model_copy(update={"text": p.text[:AGENT_PASSAGE_CHARS]}) for p in passages[:AGENT_PASSAGES]
            ],
            text=text,
            turn_id=turn_id,
            turn_index=turn_index,
            context=ContextRequest(
                conversation_id=self._input.key, turn_index=turn_index, summary=self._state.rolling_summary
            ),
            llm=flags.get("llm_generator"),
            variant=flags.get("llm_variant", False),
            redact=flags.get("redaction", True),
            stream=stream,
        )

    async def _agent(
        self, request: AgentStepRequest, steps: list[AgentStepRecord], failed: list[str]
    ) -> _AgentRun:
        """The agent's loop: a model step, the tools it asks for (side by side), their outcomes back to it,
        until it answers, or until it asks for calls that need approval: the calls that need none run, the
        others wait (`_park`) and the loop stops there. The bot's limits are the `agent_step` activity's to
        keep (it makes the model answer at them); MAX_AGENT_STEPS only guards this loop."""
        steps = list(steps)
        # The MCP servers' tools, from the worker's cache while fresh: a local step (no round trip through
        # the server) that never fails (a server that cannot be listed is left out, and said so).
        listed = await workflow.execute_local_activity_method(AgentActivity.list_mcp_tools, **LIST_MCP_TOOLS)
        for server, why in listed.unavailable.items():
            workflow.logger.warning("MCP server %s left out of this turn: %s", server, why)
        request = request.model_copy(update={"mcp_tools": listed.tools})
        for _ in range(MAX_AGENT_STEPS):
            step = await workflow.execute_activity_method(
                AgentActivity.agent_step,
                request.model_copy(update={"steps": steps}),
                **self._within_deadline(AGENT_STEP),
            )
            if step.reply is not None:
                if step.limit_reached:
                    failed.append("agent step limit")
                return _AgentRun(step.reply, steps, answer=step.model_call)
            waiting = [call for call in step.calls if call.approval is not None and call.invalid is None]
            asked = {call.call_id for call in waiting}
            outcomes = await asyncio.gather(
                *(self._call_tool(call) for call in step.calls if call.call_id not in asked)
            )
            record = AgentStepRecord(
                text=step.text,
                calls=step.calls,
                outcomes=list(outcomes),
                prompt_tokens=step.prompt_tokens,
                completion_tokens=step.completion_tokens,
                model_call=step.model_call,
            )
            if waiting:
                now = workflow.now()
                pending = [
                    PendingApproval(
                        call_id=call.call_id,
                        turn_id=request.turn_id,
                        name=call.name,
                        arguments=call.arguments,
                        approval=call.approval,
                        requested_at=now,
                        expires_at=now + timedelta(seconds=call.approval_timeout_seconds),
                    )
                    for call in waiting
                    if call.approval is not None
                ]
                return _AgentRun(Reply(text=_asking(pending), generator="approval"), steps, record, pending)
            steps.append(record)
        failed.append("agent step limit")
        return _AgentRun(Reply(text=FALLBACK_TEXT), steps)

    def _park(self, parked: ParkedAgent) -> None:
        """The agent waits for its approvals (and goes on once they are decided, or have timed out)."""
        self._parked[parked.turn_id] = parked
        self._show_pending()
        self._watch(parked)

    def _watch(self, parked: ParkedAgent) -> None:
        self._waiting[parked.turn_id] = asyncio.ensure_future(self._go_on_when_decided(parked))

    def _parked_with(self, call_id: str) -> ParkedAgent | None:
        return next(
            (parked for parked in self._parked.values() if any(p.call_id == call_id for p in parked.pending)),
            None,
        )

    def _show_pending(self) -> None:
        self._state.pending_approvals = [
            pending
            for parked in self._parked.values()
            for pending in parked.pending
            if pending.call_id not in parked.decisions
        ]
        self._touch()
        workflow.set_current_details(self._details())

    async def _go_on_when_decided(self, parked: ParkedAgent) -> None:
        """Wait until every call the agent asked for is decided or its approval has timed out (denied),
        then let the agent go on, in order with the turns."""
        remaining = (max(p.expires_at for p in parked.pending) - workflow.now()).total_seconds()
        if remaining > 0:
            with contextlib.suppress(TimeoutError):
                await workflow.wait_condition(
                    lambda: _decided(parked) or self._state.status != "active",
                    timeout=timedelta(seconds=remaining),
                )
        going_on = _resumption_id(parked)
        if self._state.status != "active":  # ended: nothing more is done for it
            self._parked.pop(parked.turn_id, None)
            self._show_pending()
            self._resumed[going_on] = None
            return
        for pending in parked.pending:
            parked.decisions.setdefault(
                pending.call_id,
                ApprovalDecision(
                    approved=False,
                    by="timeout",
                    role="timeout",
                    note="no one decided in time",
                    at=workflow.now(),
                ),
            )
        self._resuming += 1
        try:
            reply = await self._in_order(lambda: self._go_on(parked))
        finally:
            self._resuming -= 1
        self._resumed[going_on] = reply
        while len(self._resumed) > RECENT_TURNS:
            del self._resumed[next(iter(self._resumed))]

    async def _go_on(self, parked: ParkedAgent) -> TurnReply:
        """The agent goes on after its approvals: the approved calls run, the denied ones go back to the model
        as their results, and the loop continues. Its answer is a transcript entry of its own, in order with
        the turns that came meanwhile; it may ask for approvals again."""
        self._parked.pop(parked.turn_id, None)
        self._show_pending()
        turn_id = _resumption_id(parked)
        index = self._take_index()
        stream = StreamTarget(conversation_id=self._input.key, turn_id=turn_id) if parked.streamed else None
        timings: dict[str, float] = {}
        failed: list[str] = []
        started = workflow.time()

        async def go_on() -> _AgentRun:
            approved = [
                call.model_copy(update={"stream": stream})
                for call in parked.waiting.calls
                if (decision := parked.decisions.get(call.call_id)) is not None and decision.approved
            ]
            ran = await asyncio.gather(*(self._call_tool(call) for call in approved))
            made = {outcome.call_id: outcome for outcome in [*parked.waiting.outcomes, *ran]}
            outcomes = []
            for call in parked.waiting.calls:
                decision = parked.decisions.get(call.call_id)
                if decision is not None:
                    how = (
                        "timeout"
                        if decision.role == "timeout"
                        else "approved"
                        if decision.approved
                        else "denied"
                    )
                    self._approval_decisions.add(1, {"tool": call.name, "decision": how})
                if decision is None:  # needed no approval: it ran before the agent waited
                    outcomes.append(made[call.call_id])
                elif decision.approved:
                    outcomes.append(made[call.call_id].model_copy(update={"approval": decision}))
                else:
                    outcomes.append(_denied(call, decision))
            steps = [*parked.steps, parked.waiting.model_copy(update={"outcomes": outcomes})]
            request = self._agent_request(
                parked.text, parked.turn_id, parked.turn_index, parked.flags, stream, parked.passages
            )
            return await self._agent(request, steps, failed)

        try:
            run = await asyncio.wait_for(
                self._attempt("agent", go_on(), timings, failed), timeout=self._input.turn_deadline_seconds
            )
        except TimeoutError:
            failed.append("deadline exceeded")
            run = None
        reply = run.reply if run is not None else Reply(text=FALLBACK_TEXT)
        again = None
        if run is not None and run.waiting is not None:
            again = parked.model_copy(
                update={
                    "steps": run.steps,
                    "waiting": run.waiting,
                    "pending": run.pending,
                    "decisions": {},
                    "resumed": parked.resumed + 1,
                }
            )
        if failed:
            self._state.degraded_count += 1
        timings["total"] = _ms(workflow.time() - started)
        lineage = Lineage(
            generator=reply.generator,
            prompt_id=reply.prompt_id,
            prompt_hash=reply.prompt_hash,
            timings_ms=dict(timings),
            degraded_reason=", ".join(failed) or None,
            flags=dict(parked.flags),
            context=reply.context,
            agent=[] if run is None else [*run.steps, run.waiting] if run.waiting is not None else run.steps,
            agent_answer=run.answer if run is not None else None,
        )
        reply = reply.model_copy(update={"context": None})
        nlu = parked.nlu or _not_understood()
        await self._record(
            _Write(
                RecordActivities.record_turn,
                RecordTurnRequest(
                    conversation_id=self._input.key,
                    turn_id=turn_id,
                    turn_index=index,
                    user_text="",
                    reply=reply,
                    nlu=nlu,
                    degraded=bool(failed),
                    at=self._state.updated_at,
                    lineage=lineage,
                    resumes=parked.turn_id,
                ),
                local=workflow.patched(LOCAL_STEPS_PATCH),
            )
        )
        if again is not None:
            self._park(again)
        workflow.set_current_details(self._details())
        return TurnReply(
            conversation_id=self._input.conversation_id,
            turn_id=turn_id,
            turn_index=index,
            reply=reply,
            nlu=nlu,
            degraded=bool(failed),
            degraded_reason=", ".join(failed) or None,
            timings_ms=timings,
            lineage=lineage,
            held_by=self._state.held_by,
            approvals=again.pending if again is not None else [],
            resumes=parked.turn_id,
        )

    async def _call_tool(self, call: AgentToolCall) -> AgentToolOutcome:
        """One tool call as its own activity, with the tool's own timeout and attempts; a call that must not
        run, or that failed after its attempts, is an error result for the model, not a failed turn."""
        common = {
            "call_id": call.call_id,
            "name": call.name,
            "arguments_sha256": arguments_digest(call.arguments),
        }
        if call.invalid is not None:
            return AgentToolOutcome(ok=False, error=call.invalid, **common)
        options = _step(
            timeout_s=call.timeout_seconds,
            total_s=call.timeout_seconds * call.attempts + 5,
            attempts=call.attempts,
        )
        try:
            run = AgentActivity.call_mcp_tool if call.kind == "mcp" else AgentActivity.call_tool
            return await workflow.execute_activity_method(run, call, **self._within_deadline(options))
        except ActivityError as err:
            if isinstance(err.cause, CancelledError):
                raise asyncio.CancelledError from err
            return AgentToolOutcome(ok=False, error=f"the tool failed: {err.cause or err}", **common)

    async def _retrieve(
        self, local: bool, text: str, flags: dict[str, bool], timings: dict[str, float]
    ) -> RetrieveResult:
        """Search the knowledge base. A follow-up ("and to Austria?") of a knowledge-base answer searches
        with a standalone question:
        the model's (`rewrite_query`, when an LLM made that answer), else the heuristic's,
        which `retrieve` applies itself; a failed rewrite falls back to the heuristic, not to degraded."""
        previous = self._previous_query()
        standalone = None
        if self._rewrite_wanted(text, flags):
            started = workflow.time()
            try:
                rewritten = await workflow.execute_activity_method(
                    RewriteActivity.rewrite_query,
                    RewriteRequest(
                        text=text,
                        previous=previous,
                        previous_reply=self._last_reply_text(),
                        variant=flags.get("llm_variant", False),
                        redact=flags.get("redaction", True),
                    ),
                    **self._within_deadline(REWRITE),
                )
                standalone = rewritten.query
            except ActivityError as err:
                if isinstance(err.cause, CancelledError):
                    raise asyncio.CancelledError from err
                workflow.logger.warning("rewrite_query failed, the heuristic stands in: %s", err.cause or err)
            finally:
                timings["rewrite"] = _ms(workflow.time() - started)
        return await _run_step(
            local,
            RetrieveActivity.retrieve,
            RetrieveRequest(text=text, previous=previous, standalone=standalone),
            self._within_deadline(RETRIEVE),
        )

    def _previous_query(self) -> str | None:
        """The question the previous turn searched with, when it was answered from the knowledge base."""
        return self._state.last_query if self._state.last_action == "answer" else None

    def _rewrite_wanted(self, text: str, flags: dict[str, bool]) -> bool:
        """Whether a follow-up is made standalone by the model (`rewrite_query`) before retrieval."""
        return bool(
            self._previous_query()
            and is_follow_up(text)
            and self._last_reply_generator().startswith("openai:")  # the conversation has a model
            and flags.get("llm_generator") is not False
            and workflow.patched(QUERY_REWRITE_PATCH)
        )

    def _last_reply_text(self) -> str:
        last = next(reversed(self._recent.values()), None)
        return last.reply.text if last is not None else ""

    def _last_reply_generator(self) -> str:
        last = next(reversed(self._recent.values()), None)
        return last.reply.generator if last is not None else ""

    async def _summarize(self, through: int, request: TurnRequest) -> None:
        """Fold the turns before `through` into the rolling summary; a failure keeps the old one."""
        try:
            summary = await workflow.execute_activity_method(
                SummarizeActivity.summarize,
                SummarizeRequest(
                    conversation_id=self._input.key,
                    previous=self._state.rolling_summary,
                    through=through,
                    variant=request.flags.get("llm_variant", False),
                    redact=request.flags.get("redaction", True),
                ),
                **SUMMARIZE,
            )
            current = self._state.rolling_summary
            if current is None or summary.through > current.through:
                self._state.rolling_summary = summary
            self._state.summary_failed = False
        except ActivityError as err:
            if isinstance(err.cause, CancelledError):
                raise
            workflow.logger.warning("summary failed, older turns are left out: %s", err.cause or err)
            self._state.summary_failed = True
        finally:
            self._summarizing = None

    def _within_deadline(self, options: dict[str, Any]) -> dict[str, Any]:
        """A turn step's options, its budget cut to the turn's deadline: nothing of a turn outlives it."""
        deadline = timedelta(seconds=self._input.turn_deadline_seconds)
        return {
            **options,
            "start_to_close_timeout": min(options["start_to_close_timeout"], deadline),
            "schedule_to_close_timeout": min(options["schedule_to_close_timeout"], deadline),
        }

    def _details(self) -> str:
        """The summary the Web UI shows under "Current details"."""
        state = self._state
        lines = [
            f"**{state.status}** · {state.turn_count} turns · last intent `{state.last_intent}`",
            f"flow: `{state.active_flow}` (asking for `{state.requested_slot}`)"
            if state.active_flow
            else "flow: none",
        ]
        if state.slots:
            lines.append("slots: " + ", ".join(f"`{k}`={v}" for k, v in sorted(state.slots.items())))
        if state.degraded_count:
            lines.append(f"{state.degraded_count} degraded turns (see each turn's lineage for why)")
        if state.held_by == "agent":
            lines.append(f"handed off to {state.agent or 'a person'}: the bot is paused")
        if state.rolling_summary is not None:
            summary = state.rolling_summary
            lines.append(
                f"summary v{summary.version} of turns before {summary.through} ({summary.generator})"
            )
        if state.pending_approvals:
            asked = ", ".join(f"`{p.name}` ({p.approval}, `{p.call_id}`)" for p in state.pending_approvals)
            lines.append(f"waiting for approval: {asked}")
        if state.unrecorded:
            lines.append(f"{state.unrecorded} messages wait for the store (retried until it takes them)")
        if state.run > 1:
            lines.append(f"run {state.run} (continued as new); {state.summary}")
        return "\n\n".join(lines)

    def _dialogue(self) -> DialogueState:
        return DialogueState(
            active_flow=self._state.active_flow,
            slots=self._state.slots,
            requested_slot=self._state.requested_slot,
            last_topic=self._state.last_intent,
            last_action=self._state.last_action,
        )

    def _apply(self, decision: Decision, tool_result: ToolResult | None) -> None:
        """Take the policy's new dialogue state, and what the flow's tool call changed."""
        dialogue = decision.dialogue
        active_flow, requested_slot, slots = (
            dialogue.active_flow,
            dialogue.requested_slot,
            dict(dialogue.slots),
        )
        if decision.action == "flow_complete":
            if tool_result is not None and not tool_result.ok and tool_result.retry_slot:
                slots.pop(tool_result.retry_slot, None)  # ask for it again
                requested_slot = tool_result.retry_slot
            else:
                active_flow, requested_slot = None, None
        self._state.active_flow = active_flow
        self._state.requested_slot = requested_slot
        self._state.slots = slots
        if decision.action == "handoff":
            self._state.handoff = True

    def _record_request(self) -> RecordConversationRequest:
        return RecordConversationRequest(
            conversation_id=self._input.key,
            status=self._state.status,
            turn_count=self._state.turn_count,
            at=self._state.updated_at,
            ended_reason=self._state.ended_reason,
        )


@overload
def _run_step(
    local: bool, step: Callable[[S, A], Awaitable[T]], arg: A, options: dict[str, Any]
) -> Awaitable[T]: ...


@overload
def _run_step(local: bool, step: Callable[[S, A], T], arg: A, options: dict[str, Any]) -> Awaitable[T]: ...


def _run_step(local: bool, step: Callable[..., Any], arg: Any, options: dict[str, Any]) -> Awaitable[Any]:
    """A step as a local activity (inside the workflow task) or a regular one (through the task queue)."""
    if local:
        return workflow.execute_local_activity_method(step, arg, **options)
    return workflow.execute_activity_method(step, arg, **options)


async def _generate(
    local: bool, compose: dict[str, Any], generate: dict[str, Any], request: GenerateRequest
) -> Reply:
    """The reply: made in the workflow task when no model is called, else by the `generate` activity."""
    if local:
        composed = await workflow.execute_local_activity_method(GenerateActivity.compose, request, **compose)
        if composed.reply is not None:
            return composed.reply
    return await workflow.execute_activity_method(GenerateActivity.generate, request, **generate)


async def _record_until_done(write: _Write) -> None:
    """Make a write that must happen: retried by Temporal without limit (RECORD_UNTIL_DONE), so an outage
    of the store or of the workers only delays it; it never fails the workflow."""
    while True:
        try:
            await workflow.execute_activity_method(write.activity, write.request, **RECORD_UNTIL_DONE)
            return
        except ActivityError as err:
            if isinstance(err.cause, CancelledError):
                raise
            if isinstance(err.cause, ApplicationError) and err.cause.type == UNRECORDABLE:
                # The store refuses this data for good: losing one transcript entry beats a stuck conversation.
                workflow.logger.error("the store refused %s for good: %s", _activity_name(write), err.cause)
                return
            # Only an attempt budget set by an earlier version of this code (a run brought back with
            # `dialogue recover`) ends the retries: start them again.
            workflow.logger.warning("%s gave up; trying again: %s", _activity_name(write), err.cause or err)


def _activity_name(write: _Write) -> str:
    return str(getattr(write.activity, "__name__", "a record"))


def _decided(parked: ParkedAgent) -> bool:
    return all(pending.call_id in parked.decisions for pending in parked.pending)


def _resumption_id(parked: ParkedAgent) -> str:
    """The transcript id of what the agent says when it goes on after approvals."""
    return f"{parked.turn_id}.resumed-{parked.resumed + 1}"


def _asking(pending: list[PendingApproval]) -> str:
    """The reply of a turn whose agent waits for approvals: what it wants to do, and who must say yes."""
    asks = []
    for call in pending:
        who = "your approval" if call.approval == "user" else "the approval of a member of our team"
        arguments = ", ".join(f"{name}: {value}" for name, value in sorted(call.arguments.items()))
        asks.append(f"{call.name} ({arguments}) needs {who}")
    return "Before I go on: " + "; ".join(asks) + "."


def _denied(call: AgentToolCall, decision: ApprovalDecision) -> AgentToolOutcome:
    why = "no one decided in time" if decision.role == "timeout" else f"the {decision.role} said no"
    note = f" ({decision.note})" if decision.note and decision.role != "timeout" else ""
    return AgentToolOutcome(
        call_id=call.call_id,
        name=call.name,
        ok=False,
        error=f"not approved: {why}{note}; the call was not made",
        arguments_sha256=arguments_digest(call.arguments),
        approval=decision,
    )


def _update_id() -> str:
    """The running update's id: the turn id (the client's idempotency key, or one the API chose)."""
    update = workflow.current_update_info()
    return update.id if update else str(workflow.uuid4())


def _not_understood() -> NluResult:
    """The NLU result of a turn whose understanding failed or did not finish."""
    return NluResult(intent=IntentPrediction(name=OUT_OF_SCOPE, confidence=0.0))


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)
