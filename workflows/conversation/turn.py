"""A user's turn, from the `turn` update to its reply: in arrival order (double-texting by the
conversation's policy), its steps under the turn's deadline, the dialogue's new state, the transcript,
and what follows the reply (an agent parked for approvals, a summary fold, a handoff, the end)."""

from __future__ import annotations

import asyncio

from temporalio import workflow

from workflows.conversation import decisions, patches
from workflows.conversation.approvals import Approvals
from workflows.conversation.handoff import Handoff
from workflows.conversation.lifecycle import Lifecycle
from workflows.conversation.memory_notes import MemoryNotes
from workflows.conversation.outbox import Outbox
from workflows.conversation.recorder import Recorder, turn_write
from workflows.conversation.reminders import Reminders
from workflows.conversation.replies import FALLBACK_TEXT, Answer, unanswered
from workflows.conversation.respond import Outcome, Responder, TurnInput
from workflows.conversation.state import Conversation
from workflows.conversation.step_log import StepLog, ms
from workflows.conversation.summary import RollingSummary

with workflow.unsafe.imports_passed_through():
    from dialogue.model.contracts import RecordHere, Reply, StreamTarget, TurnReply, TurnRequest
    from dialogue.platform.flags import TurnFlags
    from dialogue.platform.metrics import TURN_QUEUE_DEPTH


class Turns:
    def __init__(
        self,
        conversation: Conversation,
        lifecycle: Lifecycle,
        recorder: Recorder,
        responder: Responder,
        approvals: Approvals,
        summary: RollingSummary,
        handoff: Handoff,
        memory_notes: MemoryNotes,
        outbox: Outbox,
        reminders: Reminders,
    ) -> None:
        self._conversation = conversation
        self._lifecycle = lifecycle
        self._recorder = recorder
        self._responder = responder
        self._approvals = approvals
        self._summary = summary
        self._handoff = handoff
        self._memory_notes = memory_notes
        self._outbox = outbox
        self._reminders = reminders
        self._arrivals = 0
        """Turns that arrived in this run, counted when they arrive: the newest wins under `interrupt`."""
        self._responding: asyncio.Task[Outcome] | None = None
        self._interrupted = False
        self._running: str | None = None
        # Replay-safe (nothing is recorded while replaying): how many turns wait ahead of a new one.
        self._queue_depth = (
            workflow.metric_meter()
            .with_additional_attributes({"policy": conversation.input.double_text})
            .create_histogram(TURN_QUEUE_DEPTH, "Turns running or waiting ahead of a new turn.", "turns")
        )

    def refusal(self, request: TurnRequest) -> decisions.Refusal | None:
        """Why the `turn` update is rejected before it enters history; None: it is taken."""
        # First: another end user's retry of a turn id must not get that turn's reply back.
        refusal = decisions.refuse_other_user(self._conversation.input.user, request.user)
        if refusal is not None:
            return refusal
        if update_id() in self._conversation.recent:
            return None  # answered already: the handler gives the same reply
        return decisions.refuse_turn(
            self._conversation.input,
            self._conversation.state,
            request.text,
            unrecorded=len(self._recorder.unrecorded),
            in_flight=self._lifecycle.in_flight,
            running_turn=self._running,
        )

    async def take(self, request: TurnRequest) -> TurnReply:
        """The `turn` update: the turn runs after those before it, and its reply is kept for a retry."""
        conversation = self._conversation
        turn_id = update_id()
        answered = conversation.recent.get(turn_id)
        if answered is not None:
            return answered  # retried after its run continued as new: the same reply, no second turn
        self._arrivals += 1
        arrival = self._arrivals
        self._queue_depth.record(self._lifecycle.in_flight)
        policy = conversation.input.double_text
        if self._responding is not None and decisions.interrupts(policy):
            self._interrupted = True
            self._responding.cancel()

        async def run_turn() -> TurnReply:
            if decisions.superseded(policy, self._arrivals, arrival):
                # A newer turn arrived while this one waited: it would be interrupted at once.
                return await self._unanswered(turn_id, request, interrupted=True)
            self._running = turn_id
            try:
                return await self._run(turn_id, request)
            finally:
                self._running = None

        reply = await self._lifecycle.in_order(run_turn)
        conversation.recent[turn_id] = reply
        decisions.keep_recent(conversation.recent)
        return reply

    async def _run(self, turn_id: str, request: TurnRequest) -> TurnReply:
        conversation = self._conversation
        flags = TurnFlags.of(request.flags)
        conversation.move_bot(request.bot_versions)
        if conversation.state.held_by == "agent":
            if flags.handoff:
                return await self._unanswered(turn_id, request, interrupted=False)
            # Handoff was switched off while a person held the conversation, and no person may answer
            # now: the bot takes it back rather than leave the user waiting for no one.
            await self._handoff.hand_over("bot", None, "handoff switched off")
        text = request.text.strip()
        stream = (
            StreamTarget(conversation_id=conversation.input.key, turn_id=turn_id) if request.stream else None
        )
        turn = TurnInput(text, turn_id, conversation.state.turn_count, flags, dict(request.flags), stream)
        log = StepLog()
        started = workflow.time()
        outcome = await self._respond_within_deadline(turn, log, self._record_here(turn))
        if outcome is None:
            return await self._unanswered(turn_id, request, interrupted=True)
        answer = self._conclude(turn, outcome, log, started)
        if outcome.recorded is None:  # else `respond_here` wrote it, and timed that as `record`
            recording = workflow.time()
            await self._recorder.record(
                turn_write(
                    answer.record(conversation.state.updated_at),
                    local=self._conversation.patched(patches.LOCAL_STEPS),
                )
            )
            log.time("record", recording)
        reply, pending = outcome.reply, outcome.parked.pending if outcome.parked is not None else []
        buttons = decisions.buttons(reply, pending, conversation.state.memory_offer)
        self._outbox.send(turn.turn_id, reply.text, buttons, reply.sources)
        self._follow_up(turn.turn_id, outcome)
        if outcome.parked is not None:
            self._approvals.park(outcome.parked)
        self._summary.fold_if_needed(answer.lineage.context if answer.lineage else None, flags)
        self._memory_notes.note_if_due(turn.turn_id, turn.text, outcome.reply, flags)
        action = outcome.decision.action if outcome.decision is not None else None
        if action == "handoff" and self._conversation.patched(patches.HOLD):
            await self._handoff.hand_over("agent", None, "the user asked for a person")
        log.time("total", started)
        if action == "end":
            conversation.close("ended_by_user")
        return answer.turn_reply(conversation.state.held_by)

    def _follow_up(self, turn_id: str, outcome: Outcome) -> None:
        """A flow's tool that asked, in its result, for the bot to follow up later (`remind`)."""
        result, decision = outcome.tool_result, outcome.decision
        if result is not None and result.ok and "remind" in result.data:
            tool = decision.tool.name if decision is not None and decision.tool is not None else "tool"
            self._reminders.from_tool(turn_id, tool, result.data["remind"])

    def _record_here(self, turn: TurnInput) -> RecordHere | None:
        """The turn's transcript entry for `respond_here` to write with the reply it makes, saving the
        `record_turn` step; None where the workflow must write it itself: writes wait for the store (they
        go in order), or a newer turn may interrupt this one (its entry then has no reply)."""
        conversation = self._conversation
        if self._recorder.unrecorded or decisions.interrupts(conversation.input.double_text):
            return None
        state = conversation.state
        return RecordHere(
            conversation_id=conversation.input.key,
            turn_id=turn.turn_id,
            turn_index=turn.turn_index,
            user_text=turn.text,
            at=workflow.now(),
            flags=turn.carried_flags,
            bot=state.bot,
            bot_version=state.bot_version,
            handoff_allowed=turn.flags.handoff,
            user=conversation.input.user,
        )

    async def _respond_within_deadline(
        self, turn: TurnInput, log: StepLog, record: RecordHere | None
    ) -> Outcome | None:
        """The turn's steps, as a task a newer turn can cancel under the `interrupt` policy, bounded by the
        turn's deadline (past it the steps still running are cancelled and the user gets the fallback).
        None: a newer turn interrupted it."""
        self._interrupted = False
        self._responding = asyncio.ensure_future(self._responder.respond(turn, log, record))
        try:
            if not self._conversation.patched(patches.TURN_DEADLINE):
                return await self._responding  # conversations started before the deadline: no timer
            try:
                return await asyncio.wait_for(
                    self._responding, timeout=self._conversation.input.turn_deadline_seconds
                )
            except TimeoutError:
                log.failed.append("deadline exceeded")
                return Outcome(decisions.not_understood(), None, None, Reply(text=FALLBACK_TEXT))
        except asyncio.CancelledError:
            if not self._interrupted:
                raise  # the workflow itself is being cancelled
            return None
        finally:
            self._responding = None

    def _conclude(self, turn: TurnInput, outcome: Outcome, log: StepLog, started: float) -> Answer:
        """The dialogue's new state after the turn, shown to operators, and the turn's answer."""
        state = self._conversation.state
        decision = outcome.decision
        topic = decisions.topic_of(decision, outcome.nlu)
        state.turn_count = turn.turn_index + 1
        state.last_intent = topic
        state.intent_counts[topic] = state.intent_counts.get(topic, 0) + 1
        state.last_action = decision.action if decision is not None else None
        state.memory_offer = decisions.memory_offer_made(decision, outcome.reply)
        state.last_query = outcome.query or turn.text
        if log.failed:
            state.degraded_count += 1
        if decision is not None:
            state.active_flow, state.requested_slot, state.slots = decisions.next_dialogue(
                decision, outcome.tool_result, decisions.trusted_values(state)
            )
            if decision.action == "handoff":
                state.handoff = True
        state.updated_at = workflow.now()
        self._conversation.show()
        self._conversation.listing.turn(state, topic)
        answer = Answer(
            conversation_id=self._conversation.input.conversation_id,
            key=self._conversation.input.key,
            turn_id=turn.turn_id,
            turn_index=turn.turn_index,
            user_text=turn.text,
            reply=outcome.reply,
            nlu=outcome.nlu,
            log=log,
            flags=turn.carried_flags,
            action=decision.action if decision is not None else None,
            query=outcome.query,
            agent=outcome.agent,
            agent_answer=outcome.agent_answer,
            approvals=outcome.parked.pending if outcome.parked is not None else [],
            bot=state.bot,
            bot_version=state.bot_version,
            user=self._conversation.input.user,
        )
        if outcome.recorded is not None:
            answer.adopt(outcome.recorded)  # the lineage `respond_here` wrote with the turn
        else:
            # `total`: until the reply was ready (the turn's own total, in its reply, adds the recording).
            answer.trace(total_ms=ms(workflow.time() - started))
        return answer

    async def _unanswered(self, turn_id: str, request: TurnRequest, *, interrupted: bool) -> TurnReply:
        """A turn the bot does not answer (interrupted, or a person holds the conversation): recorded all the same."""
        conversation = self._conversation
        index = conversation.take_index()
        answer = unanswered(
            conversation.input.conversation_id,
            conversation.input.key,
            turn_id,
            index,
            request.text.strip(),
            user=conversation.input.user,  # what they say to a person is theirs to have remembered too
        )
        conversation.show()
        await self._recorder.record(
            turn_write(
                answer.record(conversation.state.updated_at),
                local=self._conversation.patched(patches.LOCAL_STEPS),
            )
        )
        return answer.turn_reply(conversation.state.held_by, interrupted=interrupted)


def update_id() -> str:
    """The running update's id: the turn id (the client's idempotency key, or one the API chose)."""
    update = workflow.current_update_info()
    return update.id if update else str(workflow.uuid4())
