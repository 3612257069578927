"""`ConversationWorkflow`: one durable workflow per conversation.

Turns arrive as the `turn` update and run one at a time, in arrival order. Each turn
understands the text and searches the knowledge base side by side, then generates
the reply and records it. A step that fails after its retries gives a fallback
instead of an error: the user gets an answer marked `degraded`, and the
conversation stays healthy for the next turn.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from datetime import timedelta
from typing import Any, NamedTuple, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError

with workflow.unsafe.imports_passed_through():
    from activities.generate import GenerateActivity
    from activities.record import RecordActivities
    from activities.retrieve import RetrieveActivity
    from activities.tools import ToolActivity
    from activities.understand import UnderstandActivity
    from dialogue.temporal import LAST_INTENT, STATUS, TURN_COUNT
    from workflows.contracts import (
        OUT_OF_SCOPE,
        ConversationInput,
        ConversationState,
        Decision,
        DialogueState,
        DocumentRef,
        EndRequest,
        GenerateRequest,
        IntentPrediction,
        Lineage,
        NluResult,
        Passage,
        RecordConversationRequest,
        RecordTurnRequest,
        Reply,
        RetrieveRequest,
        ToolResult,
        TurnReply,
        TurnRequest,
        UnderstandRequest,
    )

T = TypeVar("T")

# Error types the API maps to HTTP statuses (api/errors.py).
CONVERSATION_ENDED = "ConversationEnded"
INVALID_TURN = "InvalidTurn"
TURN_IN_PROGRESS = "TurnInProgress"
QUEUE_FULL = "TurnQueueFull"

FALLBACK_TEXT = "Sorry, I can't answer that right now. Please try again in a moment."
TURN_DEADLINE_PATCH = "turn-deadline"


class _Outcome(NamedTuple):
    nlu: NluResult
    decision: Decision | None
    tool_result: ToolResult | None
    reply: Reply


def _step(timeout_s: float, total_s: float, attempts: int) -> dict[str, Any]:
    """Activity options: each attempt bounded, retries with exponential backoff, the whole bounded too."""
    return {
        "start_to_close_timeout": timedelta(seconds=timeout_s),
        "schedule_to_close_timeout": timedelta(seconds=total_s),
        "retry_policy": RetryPolicy(
            initial_interval=timedelta(milliseconds=200),
            backoff_coefficient=2.0,
            maximum_interval=timedelta(seconds=2),
            maximum_attempts=attempts,
        ),
    }


UNDERSTAND = _step(timeout_s=5, total_s=10, attempts=3)
RETRIEVE = _step(timeout_s=5, total_s=10, attempts=3)
GENERATE = _step(timeout_s=20, total_s=30, attempts=3)
# Recording is cheap to retry and the transcript should not miss a turn: try harder.
RECORD = _step(timeout_s=10, total_s=60, attempts=10)
TOOL = _step(timeout_s=10, total_s=20, attempts=3)


@workflow.defn
class ConversationWorkflow:
    @workflow.init
    def __init__(self, input: ConversationInput) -> None:
        now = workflow.now()
        self._input = input
        self._state = ConversationState(conversation_id=input.conversation_id, started_at=now, updated_at=now)
        # asyncio.Lock is FIFO: turns that wait for it run in the order they arrived.
        self._turn_lock = asyncio.Lock()
        self._turns_in_flight = 0
        self._running_turn: str | None = None
        self._touched = False

    @workflow.run
    async def run(self, input: ConversationInput) -> ConversationState:
        workflow.upsert_search_attributes([STATUS.value_set("active")])
        await workflow.execute_activity_method(
            RecordActivities.record_conversation,
            self._record_request(),
            **RECORD,
        )
        idle = timedelta(seconds=input.idle_timeout_seconds)
        while self._state.status == "active":
            self._touched = False
            try:
                await workflow.wait_condition(
                    lambda: self._touched or self._state.status != "active", timeout=idle
                )
            except TimeoutError:
                if self._turns_in_flight == 0:
                    self._close("idle_timeout")
        # Turns accepted before the end still get their replies.
        await workflow.wait_condition(workflow.all_handlers_finished)
        await workflow.execute_activity_method(
            RecordActivities.record_conversation, self._record_request(), **RECORD
        )
        return self._state

    @workflow.update
    async def turn(self, request: TurnRequest) -> TurnReply:
        self._turns_in_flight += 1
        self._touched = True
        try:
            async with self._turn_lock:
                update = workflow.current_update_info()
                self._running_turn = update.id if update else None
                try:
                    return await self._run_turn(request)
                finally:
                    self._running_turn = None
        finally:
            self._turns_in_flight -= 1
            self._touched = True

    @turn.validator
    def validate_turn(self, request: TurnRequest) -> None:
        # Raising here rejects the update before it enters history.
        if self._state.status != "active":
            raise ApplicationError("the conversation has ended", type=CONVERSATION_ENDED)
        if not request.text.strip():
            raise ApplicationError("text must not be empty", type=INVALID_TURN)
        if len(request.text) > self._input.max_text_chars:
            raise ApplicationError(
                f"text is longer than {self._input.max_text_chars} characters", type=INVALID_TURN
            )
        if self._input.double_text == "reject" and self._turns_in_flight:
            raise ApplicationError(
                f"turn {self._running_turn} is still running", self._running_turn, type=TURN_IN_PROGRESS
            )
        if self._turns_in_flight >= self._input.max_queued_turns:
            raise ApplicationError(f"{self._turns_in_flight} turns are already waiting", type=QUEUE_FULL)

    @workflow.query
    def state(self) -> ConversationState:
        return self._state

    @workflow.signal
    def end(self, request: EndRequest) -> None:
        if self._state.status == "active":
            self._close(request.reason)

    def _close(self, reason: str) -> None:
        if self._state.status == "ended":
            return  # the first reason stands
        self._state.status = "ended"
        self._state.ended_reason = reason
        self._state.updated_at = workflow.now()
        workflow.set_current_details(self._details())
        workflow.upsert_search_attributes([STATUS.value_set("ended")])

    async def _run_turn(self, request: TurnRequest) -> TurnReply:
        update = workflow.current_update_info()
        turn_id = update.id if update else str(workflow.uuid4())
        turn_index = self._state.turn_count
        text = request.text.strip()
        timings: dict[str, float] = {}
        failed: list[str] = []
        started = workflow.time()

        respond = self._respond(text, turn_index, timings, failed)
        if workflow.patched(TURN_DEADLINE_PATCH):
            try:
                # Past the deadline the steps still running are cancelled and the user gets the fallback.
                outcome = await asyncio.wait_for(respond, timeout=self._input.turn_deadline_seconds)
            except TimeoutError:
                failed.append("deadline exceeded")
                outcome = _Outcome(_not_understood(), None, None, Reply(text=FALLBACK_TEXT))
        else:  # conversations started before the deadline existed replay without its timer
            outcome = await respond
        nlu, decision, tool_result, reply = outcome

        self._state.turn_count = turn_index + 1
        self._state.last_intent = nlu.intent.name
        if decision is not None:
            self._apply(decision, tool_result)
        self._state.updated_at = workflow.now()
        workflow.set_current_details(self._details())
        workflow.upsert_search_attributes(
            [
                LAST_INTENT.value_set(nlu.intent.name),
                TURN_COUNT.value_set(self._state.turn_count),
            ]
        )
        lineage = Lineage(
            nlu_model=nlu.model,
            generator=reply.generator,
            prompt_id=reply.prompt_id,
            prompt_hash=reply.prompt_hash,
            documents=[
                DocumentRef(document_id=s.document_id, version=s.document_version, chunk_id=s.chunk_id)
                for s in reply.sources
            ],
        )
        record = RecordTurnRequest(
            conversation_id=self._input.conversation_id,
            turn_id=turn_id,
            turn_index=turn_index,
            user_text=text,
            reply=reply,
            nlu=nlu,
            degraded=bool(failed),
            at=self._state.updated_at,
            lineage=lineage,
        )
        await self._attempt(
            "record",
            workflow.execute_activity_method(RecordActivities.record_turn, record, **RECORD),
            timings,
            failed,
        )
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
        )

    async def _respond(
        self, text: str, turn_index: int, timings: dict[str, float], failed: list[str]
    ) -> _Outcome:
        """The steps of a turn up to its reply: understand and retrieve, the flow's tool, generate."""
        # Retrieval does not depend on the intent: run it beside NLU and the policy, not after them.
        understanding, retrieved = await asyncio.gather(
            self._attempt(
                "understand",
                workflow.execute_activity_method(
                    UnderstandActivity.understand,
                    UnderstandRequest(text=text, dialogue=self._dialogue()),
                    **UNDERSTAND,
                ),
                timings,
                failed,
            ),
            self._attempt(
                "retrieve",
                workflow.execute_activity_method(
                    RetrieveActivity.retrieve, RetrieveRequest(text=text), **RETRIEVE
                ),
                timings,
                failed,
            ),
        )
        nlu = understanding.nlu if understanding else _not_understood()
        decision = understanding.decision if understanding else None
        passages: list[Passage] = retrieved.passages if retrieved else []
        tool_result = None
        if decision is not None and decision.tool is not None:
            tool_result = await self._attempt(
                "tool",
                workflow.execute_activity_method(ToolActivity.run_tool, decision.tool, **TOOL),
                timings,
                failed,
            )
        reply = await self._attempt(
            "generate",
            workflow.execute_activity_method(
                GenerateActivity.generate,
                GenerateRequest(
                    text=text,
                    turn_index=turn_index,
                    nlu=nlu,
                    passages=passages,
                    decision=decision,
                    tool_result=tool_result,
                ),
                **GENERATE,
            ),
            timings,
            failed,
        ) or Reply(text=FALLBACK_TEXT)

        return _Outcome(nlu, decision, tool_result, reply)

    async def _attempt(
        self, step: str, call: Awaitable[T], timings: dict[str, float], failed: list[str]
    ) -> T | None:
        """Run one step; on failure after its retries, note it and give None so the turn can fall back."""
        start = workflow.time()
        try:
            return await call
        except ActivityError as err:
            if isinstance(err.cause, CancelledError):
                # Cancelled by the turn's deadline, not failed: let the cancellation reach the deadline.
                raise asyncio.CancelledError from err
            workflow.logger.warning("step %s failed: %s", step, err.cause or err)
            failed.append(f"{step} failed")
            return None
        finally:
            timings[step] = _ms(workflow.time() - start)

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
        if state.handoff:
            lines.append("handed off to a person")
        return "\n\n".join(lines)

    def _dialogue(self) -> DialogueState:
        return DialogueState(
            active_flow=self._state.active_flow,
            slots=self._state.slots,
            requested_slot=self._state.requested_slot,
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
            conversation_id=self._input.conversation_id,
            status=self._state.status,
            turn_count=self._state.turn_count,
            at=self._state.updated_at,
            ended_reason=self._state.ended_reason,
        )


def _not_understood() -> NluResult:
    """The NLU result of a turn whose understanding failed or did not finish."""
    return NluResult(intent=IntentPrediction(name=OUT_OF_SCOPE, confidence=0.0))


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)
