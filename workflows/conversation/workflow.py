"""`ConversationWorkflow`: one durable workflow per conversation.

Turns arrive as the `turn` update and run one at a time, in arrival order. Each turn understands the
text, searches the knowledge base when the reply is made from it, then generates the reply and records
it. A step that fails after its retries gives a fallback instead of an error: the user gets an answer
marked `degraded`, and the conversation stays healthy for the next turn.

A person can take the conversation over (`handoff`), answer through `agent_message`, and give it back
(`handback`); an agent's tool calls may wait for a person's approval (`approve`); these run in the same
order as turns. After `turns_per_run` messages the run continues as new with a compact state, so a
conversation of any length keeps a small history.

This class is the shell: its run loop, its handlers and their validators. Each role is a module of this
package (turn, respond, agent, approvals, handoff, summary, recorder, lifecycle), and every choice they
make is a plain function in `decisions`.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ApplicationError

from workflows.conversation import patches
from workflows.conversation.agent import AgentLoop
from workflows.conversation.approvals import Approvals
from workflows.conversation.decisions import (
    Refusal,
    refuse_agent_message,
    refuse_cancel_reminder,
    refuse_event,
    refuse_if_ended,
    refuse_if_store_behind,
)
from workflows.conversation.handoff import Handoff
from workflows.conversation.lifecycle import Lifecycle
from workflows.conversation.memory_notes import MemoryNotes
from workflows.conversation.outbox import Outbox
from workflows.conversation.recorder import Recorder, conversation_write, record_until_done
from workflows.conversation.reminders import Reminders
from workflows.conversation.respond import Responder
from workflows.conversation.state import Conversation
from workflows.conversation.summary import RollingSummary
from workflows.conversation.turn import Turns

with workflow.unsafe.imports_passed_through():
    from dialogue.model.contracts import (
        AgentMessageReply,
        AgentMessageRequest,
        ApprovalReply,
        ApprovalRequest,
        CancelReminderRequest,
        CarriedState,
        ConversationInput,
        ConversationState,
        EndRequest,
        EventReply,
        EventRequest,
        HandbackRequest,
        HandoffRequest,
        Reminder,
        ReminderRequest,
        TurnReply,
        TurnRequest,
    )


@workflow.defn
class ConversationWorkflow:
    @workflow.init
    def __init__(self, input: ConversationInput) -> None:
        self._conversation = conversation = Conversation(input)
        self._lifecycle = Lifecycle(conversation)
        self._recorder = Recorder(conversation)
        self._outbox = Outbox(conversation)
        self._handoff = Handoff(conversation, self._recorder, self._outbox)
        self._reminders = Reminders(conversation, self._lifecycle, self._recorder, self._outbox)
        self._summary = RollingSummary(conversation)
        self._memory_notes = MemoryNotes(conversation)
        agent = AgentLoop(conversation)
        self._approvals = Approvals(conversation, self._lifecycle, agent, self._recorder, self._outbox)
        self._turns = Turns(
            conversation,
            self._lifecycle,
            self._recorder,
            Responder(conversation, agent),
            self._approvals,
            self._summary,
            self._handoff,
            self._memory_notes,
            self._outbox,
            self._reminders,
        )

    @workflow.run
    async def run(self, input: ConversationInput) -> ConversationState:
        conversation, lifecycle = self._conversation, self._lifecycle
        # Runs recorded before continue-as-new existed replay without it.
        can_continue = conversation.patched(patches.CONTINUE_AS_NEW)
        conversation.listing.start(input, conversation.state)
        lean = conversation.patched(patches.LEAN_TURN)
        lifecycle.start()
        if input.carried is not None:
            conversation.show()
        elif lean:
            await self._recorder.record(conversation_write(conversation, local=True))
        else:
            await record_until_done(conversation_write(conversation))
        self._approvals.watch_carried()
        self._reminders.watch_carried()
        idle = timedelta(seconds=input.idle_timeout_seconds)

        def time_to_continue() -> bool:
            return lifecycle.time_to_continue(can_continue)

        def busy() -> bool:
            return (
                lifecycle.in_flight > 0 or bool(self._approvals.parked) or bool(conversation.state.reminders)
            )

        while conversation.active and not time_to_continue():
            if lean:
                await lifecycle.wait_while_active(idle, time_to_continue, busy)
            else:
                await lifecycle.wait_for_a_touch(idle, busy)
        # Turns accepted before the end (or before continuing) still get their replies, in this run, and
        # the transcript has every message before the run ends: the next run starts with nothing owed.
        await workflow.wait_condition(
            lambda: (
                workflow.all_handlers_finished()
                and self._recorder.recorded()
                and self._outbox.delivered()
                and not self._summary.folding
                and not self._memory_notes.noting
                and self._approvals.resuming == 0
                # A conversation the user ended still sends the reminders it holds (a next run takes them).
                and self._reminders.firing == 0
                and (conversation.active or not conversation.state.reminders)
            )
        )
        if conversation.active:
            carried = CarriedState(
                state=conversation.state,
                recent_turns=list(conversation.recent.values()),
                parked=list(self._approvals.parked.values()),
            )
            conversation.listing.run_ends(conversation.state)
            workflow.continue_as_new(input.model_copy(update={"carried": carried}))
        await record_until_done(conversation_write(conversation))
        return conversation.state

    @workflow.update
    async def turn(self, request: TurnRequest) -> TurnReply:
        return await self._turns.take(request)

    @turn.validator
    def validate_turn(self, request: TurnRequest) -> None:
        # Raising here rejects the update before it enters history.
        _refuse(self._turns.refusal(request))

    @workflow.update
    async def handoff(self, request: HandoffRequest) -> ConversationState:
        """A person takes the conversation over: the bot stops answering until `handback`."""
        return await self._lifecycle.in_order(
            lambda: self._handoff.hand_over("agent", request.agent, request.reason)
        )

    @handoff.validator
    def validate_handoff(self, request: HandoffRequest) -> None:
        self._refuse_unless_open()

    @workflow.update
    async def handback(self, request: HandbackRequest) -> ConversationState:
        """The bot answers the user's turns again."""
        return await self._lifecycle.in_order(
            lambda: self._handoff.hand_over("bot", request.agent, "handed back")
        )

    @handback.validator
    def validate_handback(self, request: HandbackRequest) -> None:
        self._refuse_unless_open()

    @workflow.update
    async def agent_message(self, request: AgentMessageRequest) -> AgentMessageReply:
        """A person's reply to the user, recorded in the transcript and sent to stream clients."""
        return await self._lifecycle.in_order(lambda: self._handoff.post(request))

    @agent_message.validator
    def validate_agent_message(self, request: AgentMessageRequest) -> None:
        conversation = self._conversation
        _refuse(
            refuse_agent_message(
                conversation.state,
                request.text,
                conversation.input.max_text_chars,
                len(self._recorder.unrecorded),
            )
        )

    @workflow.update
    async def approve(self, request: ApprovalRequest) -> ApprovalReply:
        """A decision on a tool call that waits for approval; answered, once every call its agent waits
        for is decided, with what the agent then said."""
        return await self._approvals.decide(request)

    @approve.validator
    def validate_approve(self, request: ApprovalRequest) -> None:
        _refuse(self._approvals.refusal(request))

    @workflow.update
    async def remind(self, request: ReminderRequest) -> Reminder:
        """A message the bot sends the user at `due_at`, on its own (a durable timer)."""
        return self._reminders.schedule(request)

    @remind.validator
    def validate_remind(self, request: ReminderRequest) -> None:
        _refuse(self._reminders.refusal(request))

    @workflow.update
    async def cancel_reminder(self, request: CancelReminderRequest) -> ConversationState:
        return self._reminders.cancel(request.id)

    @cancel_reminder.validator
    def validate_cancel_reminder(self, request: CancelReminderRequest) -> None:
        _refuse(refuse_cancel_reminder(self._conversation.state, request.id))

    @workflow.update
    async def event(self, request: EventRequest) -> EventReply:
        """The integrator's system reports an event: the reminders waiting for it are said (also in a
        conversation the user has ended, which waits for its reminders)."""
        return self._reminders.happened(request)

    @event.validator
    def validate_event(self, request: EventRequest) -> None:
        _refuse(refuse_event(self._conversation.state, request.name))

    @property
    def bot_ref(self) -> str | None:
        """The bot version this conversation's activities serve (`dialogue.platform.bot_header`)."""
        return self._conversation.bot_ref

    @workflow.query
    def state(self) -> ConversationState:
        return self._conversation.state

    @workflow.query
    def recent_turn(self, turn_id: str) -> TurnReply | None:
        """A recent turn's reply, also one answered by an earlier run (whose updates Temporal no longer finds)."""
        return self._conversation.recent.get(turn_id)

    @workflow.signal
    def end(self, request: EndRequest) -> None:
        if self._conversation.active:
            self._conversation.close(request.reason)

    def _refuse_unless_open(self) -> None:
        _refuse(
            refuse_if_ended(self._conversation.state)
            or refuse_if_store_behind(len(self._recorder.unrecorded))
        )


def _refuse(refusal: Refusal | None) -> None:
    if refusal is not None:
        raise ApplicationError(refusal.message, *refusal.details, type=refusal.type)
