"""Agents that wait for a person's approval of tool calls they asked for: parked in the workflow's state
(carried over at continue-as-new), decided through the `approve` update or timed out, then going on in
order with the turns, their answer a transcript entry of its own."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ApplicationError

from workflows.conversation import decisions, patches
from workflows.conversation.agent import AgentLoop, AgentRun
from workflows.conversation.lifecycle import Lifecycle
from workflows.conversation.outbox import Outbox
from workflows.conversation.recorder import Recorder, turn_write
from workflows.conversation.replies import FALLBACK_TEXT, Answer
from workflows.conversation.state import Conversation
from workflows.conversation.step_log import StepLog, ms

with workflow.unsafe.imports_passed_through():
    from dialogue.model.contracts import (
        NO_SUCH_APPROVAL,
        ApprovalDecision,
        ApprovalReply,
        ApprovalRequest,
        ParkedAgent,
        Reply,
        StreamTarget,
        TurnReply,
    )
    from dialogue.platform.flags import TurnFlags
    from dialogue.platform.metrics import APPROVAL_DECISIONS


class Approvals:
    def __init__(
        self,
        conversation: Conversation,
        lifecycle: Lifecycle,
        agent: AgentLoop,
        recorder: Recorder,
        outbox: Outbox,
    ) -> None:
        self._conversation = conversation
        self._lifecycle = lifecycle
        self._agent = agent
        self._recorder = recorder
        self._outbox = outbox
        carried = conversation.input.carried
        self.parked: dict[str, ParkedAgent] = {p.turn_id: p for p in carried.parked} if carried else {}
        self._waiting: dict[str, asyncio.Future[None]] = {}
        """Per agent waiting for approvals: the task that lets it go on once they are decided."""
        self.resuming = 0
        """Agents whose approvals are decided and that are going on: the run ends only after them."""
        self._resumed: dict[str, TurnReply | None] = {}
        """Answers of agents that went on after approvals, by their turn id, for the `approve` that waits
        for one (None: the conversation ended first, the agent did not go on)."""
        self._decisions = workflow.metric_meter().create_counter(
            APPROVAL_DECISIONS, "Decisions on tool calls that waited for approval.", "decisions"
        )

    def watch_carried(self) -> None:
        """Agents carried over from the previous run wait on, their timeouts still running."""
        for parked in self.parked.values():
            self._watch(parked)

    def park(self, parked: ParkedAgent) -> None:
        """The agent waits for its approvals (and goes on once they are decided, or have timed out)."""
        self.parked[parked.turn_id] = parked
        self._show_pending()
        self._watch(parked)

    def refusal(self, request: ApprovalRequest) -> decisions.Refusal | None:
        parked = decisions.parked_with(self.parked.values(), request.call_id)
        return decisions.refuse_approval(
            self._conversation.state, parked, request, owner=self._conversation.input.user
        )

    async def decide(self, request: ApprovalRequest) -> ApprovalReply:
        """A decision on a tool call that waits for approval. Once every call its turn's agent waits for is
        decided, the agent goes on (approved calls run, denied ones are the model's to read) and the
        update answers with what the agent then said."""
        parked = decisions.parked_with(self.parked.values(), request.call_id)
        if parked is None:  # the validator refused it; a replay of an older history may still get here
            raise ApplicationError(
                f"no tool call {request.call_id!r} waits for approval", type=NO_SUCH_APPROVAL
            )
        parked.decisions[request.call_id] = ApprovalDecision(
            approved=request.approve,
            by=request.by,
            role="agent" if request.as_agent else "user",
            note=request.note,
            at=workflow.now(),
        )
        self._show_pending()
        reply = ApprovalReply(
            conversation_id=self._conversation.input.conversation_id,
            call_id=request.call_id,
            approved=request.approve,
        )
        if not decisions.decided(parked):
            return reply.model_copy(
                update={"pending": [p for p in parked.pending if p.call_id not in parked.decisions]}
            )
        going_on = decisions.resumption_id(parked)
        await workflow.wait_condition(lambda: going_on in self._resumed)
        return reply.model_copy(update={"reply": self._resumed[going_on]})

    def _watch(self, parked: ParkedAgent) -> None:
        self._waiting[parked.turn_id] = asyncio.ensure_future(self._go_on_when_decided(parked))

    def _show_pending(self) -> None:
        self._conversation.state.pending_approvals = decisions.undecided(self.parked.values())
        self._lifecycle.touch()
        self._conversation.show()

    async def _go_on_when_decided(self, parked: ParkedAgent) -> None:
        """Wait until every call the agent asked for is decided or its approval has timed out (denied),
        then let the agent go on, in order with the turns."""
        conversation = self._conversation
        remaining = (max(p.expires_at for p in parked.pending) - workflow.now()).total_seconds()
        if remaining > 0:
            with contextlib.suppress(TimeoutError):
                await workflow.wait_condition(
                    lambda: decisions.decided(parked) or not conversation.active,
                    timeout=timedelta(seconds=remaining),
                )
        going_on = decisions.resumption_id(parked)
        if not conversation.active:  # ended: nothing more is done for it
            self.parked.pop(parked.turn_id, None)
            self._show_pending()
            self._resumed[going_on] = None
            return
        decisions.time_out(parked, workflow.now())
        self.resuming += 1
        try:
            reply = await self._lifecycle.in_order(lambda: self._go_on(parked))
        finally:
            self.resuming -= 1
        self._resumed[going_on] = reply
        decisions.keep_recent(self._resumed)

    async def _go_on(self, parked: ParkedAgent) -> TurnReply:
        """The agent goes on after its approvals: the approved calls run, the denied ones go back to the model
        as their results, and the loop continues. Its answer is a transcript entry of its own, in order with
        the turns that came meanwhile; it may ask for approvals again."""
        conversation = self._conversation
        self.parked.pop(parked.turn_id, None)
        self._show_pending()
        turn_id = decisions.resumption_id(parked)
        index = conversation.take_index()
        stream = (
            StreamTarget(conversation_id=conversation.input.key, turn_id=turn_id) if parked.streamed else None
        )
        log = StepLog()
        started = workflow.time()
        try:
            run = await asyncio.wait_for(
                log.attempt("agent", self._run_decided(parked, stream, log)),
                timeout=conversation.input.turn_deadline_seconds,
            )
        except TimeoutError:
            log.failed.append("deadline exceeded")
            run = None
        again = None
        if run is not None and run.waiting is not None:
            again = decisions.parked_again(parked, run.steps, run.waiting, run.pending)
        if log.failed:
            conversation.state.degraded_count += 1
        answer = Answer(
            conversation_id=conversation.input.conversation_id,
            key=conversation.input.key,
            turn_id=turn_id,
            turn_index=index,
            user_text="",
            reply=run.reply if run is not None else Reply(text=FALLBACK_TEXT),
            nlu=parked.nlu or decisions.not_understood(),
            log=log,
            flags=parked.flags,
            action="agent",
            query=parked.query,
            agent=run.recorded_steps if run is not None else [],
            agent_answer=run.answer if run is not None else None,
            approvals=again.pending if again is not None else [],
            resumes=parked.turn_id,
            bot=conversation.state.bot,
            bot_version=conversation.state.bot_version,
        )
        answer.trace(total_ms=ms(workflow.time() - started))
        await self._recorder.record(
            turn_write(
                answer.record(conversation.state.updated_at),
                local=self._conversation.patched(patches.LOCAL_STEPS),
            )
        )
        log.time("total", started)
        reply = answer.reply
        self._outbox.send(
            turn_id, reply.text, decisions.buttons(reply, answer.approvals, None), reply.sources
        )
        if again is not None:
            self.park(again)
        conversation.show()
        return answer.turn_reply(conversation.state.held_by)

    async def _run_decided(self, parked: ParkedAgent, stream: StreamTarget | None, log: StepLog) -> AgentRun:
        """The approved calls run, every decision is counted, and the agent's loop goes on from there."""
        approved = [call.model_copy(update={"stream": stream}) for call in decisions.approved_calls(parked)]
        ran = await asyncio.gather(*(self._agent.call_tool(call) for call in approved))
        for call in parked.waiting.calls:
            decision = parked.decisions.get(call.call_id)
            if decision is not None:
                self._decisions.add(1, {"tool": call.name, "decision": decisions.decision_label(decision)})
        made = {outcome.call_id: outcome for outcome in [*parked.waiting.outcomes, *ran]}
        outcomes = decisions.outcomes_after_decisions(parked, made)
        steps = [*parked.steps, parked.waiting.model_copy(update={"outcomes": outcomes})]
        request = self._agent.request(
            parked.text,
            parked.turn_id,
            parked.turn_index,
            TurnFlags.of(parked.flags),
            stream,
            parked.passages,
        )
        return await self._agent.run(request, steps, log)
