"""Messages the bot sends later, on its own: "remind me tomorrow at 9", scheduled by the integrator's server
or a bot's tool (`remind`). Each is a durable timer in the workflow: a worker's or the whole stack's
restart does not lose it, and it is kept in the state across continue-as-new, where its timer starts again
for what is left. When it fires, the message goes into the transcript (`bot_message`, which the widget and
the console show as it happens) and to the conversation's messaging platform, in order with the turns. A
conversation with reminders waiting is not ended by its idle timeout, and one the user ended waits for
them before its run closes."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow

from workflows.conversation import decisions, patches
from workflows.conversation.lifecycle import Lifecycle
from workflows.conversation.outbox import Outbox
from workflows.conversation.recorder import Recorder
from workflows.conversation.state import Conversation

with workflow.unsafe.imports_passed_through():
    from dialogue.model.contracts import (
        ConversationState,
        EventReply,
        EventRequest,
        Reminder,
        ReminderRequest,
        ReminderTool,
    )


class Reminders:
    def __init__(
        self, conversation: Conversation, lifecycle: Lifecycle, recorder: Recorder, outbox: Outbox
    ) -> None:
        self._conversation = conversation
        self._lifecycle = lifecycle
        self._recorder = recorder
        self._outbox = outbox
        self._timers: dict[str, asyncio.Task[None]] = {}
        self.firing = 0

    def watch_carried(self) -> None:
        """The reminders an earlier run handed over: their timers start again for what is left."""
        for reminder in self._conversation.state.reminders:
            self._watch(reminder)

    def refusal(self, request: ReminderRequest) -> decisions.Refusal | None:
        conversation = self._conversation
        return decisions.refuse_reminder(
            conversation.state, request, workflow.now(), conversation.input.max_text_chars
        )

    def from_tool(self, turn_id: str, tool: str, directive: object) -> None:
        """A bot's tool asked for a follow-up: its result's `remind` (`{"text": …, "in_seconds": …}`).
        One it gets wrong is logged and left: the turn's reply stands."""
        try:
            asked = ReminderTool.model_validate(directive)
        except ValueError as err:
            workflow.logger.warning("tool %s asked for a reminder it described wrongly: %s", tool, err)
            return
        request = ReminderRequest(
            text=asked.text,
            due_at=workflow.now() + timedelta(seconds=asked.in_seconds),
            by=f"tool:{tool}",
            on_event=asked.on_event,
        )
        refusal = self.refusal(request)
        if refusal is not None:
            workflow.logger.warning(
                "tool %s asked for a reminder that was refused: %s", tool, refusal.message
            )
            return
        self.schedule(request, f"{turn_id}-remind")

    def schedule(self, request: ReminderRequest, reminder_id: str | None = None) -> Reminder:
        """The `remind` update (its id the reminder's), or a tool's reminder: kept in the state, soonest first,
        and its timer started."""
        workflow.patched(patches.REMINDERS)  # a run with a reminder records it: before, there were none
        update = workflow.current_update_info()
        reminder = Reminder(
            id=reminder_id or (update.id if update else str(workflow.uuid4())),
            text=request.text.strip(),
            due_at=request.due_at,
            by=request.by,
            on_event=request.on_event,
        )
        state = self._conversation.state
        if any(r.id == reminder.id for r in state.reminders):
            return reminder  # the same update again
        self._keep([*state.reminders, reminder])
        self._watch(reminder)
        return reminder

    def cancel(self, reminder_id: str) -> ConversationState:
        state = self._conversation.state
        self._keep([r for r in state.reminders if r.id != reminder_id])
        timer = self._timers.pop(reminder_id, None)
        if timer is not None:
            timer.cancel()
        return state

    def happened(self, request: EventRequest) -> EventReply:
        """The `event` update: the integrator reports `request.name`. The reminders waiting for it are due
        now: said next, in order (and by the next run, should this one continue as new first)."""
        now = workflow.now()
        state = self._conversation.state
        due = [r.id for r in state.reminders if r.on_event == request.name]
        self._keep(
            [
                r.model_copy(update={"on_event": None, "due_at": now}) if r.id in due else r
                for r in state.reminders
            ]
        )
        return EventReply(conversation_id=self._conversation.input.conversation_id, reminders=due)

    def _keep(self, reminders: list[Reminder]) -> None:
        """The state's reminders from now on, soonest first, shown, and the events they wait for listed
        (`DialogueAwaits`: how `POST /v1/events` finds the conversation)."""
        state = self._conversation.state
        state.reminders = sorted(reminders, key=lambda r: r.due_at)
        self._conversation.show()
        self._conversation.listing.awaits(sorted({r.on_event for r in state.reminders if r.on_event}))

    def _watch(self, reminder: Reminder) -> None:
        self._timers[reminder.id] = asyncio.ensure_future(self._fire_when_due(reminder))

    async def _fire_when_due(self, reminder: Reminder) -> None:
        if reminder.on_event is not None:
            came = await self._event_came(reminder)
            if came is None:
                return
            reminder = came  # due now
        left = reminder.due_at - workflow.now()
        if left > timedelta(0):
            await workflow.sleep(left)
        self.firing += 1
        try:
            await self._lifecycle.in_order(lambda: self._send(reminder))
        finally:
            self.firing -= 1

    async def _event_came(self, reminder: Reminder) -> Reminder | None:
        """Wait for the reminder's event until its `due_at`: the reminder as the event left it (due now).
        None: the event did not come in time, and the reminder is dropped unsaid (or it was cancelled)."""

        def waiting() -> bool:
            return any(r.id == reminder.id and r.on_event for r in self._conversation.state.reminders)

        left = (reminder.due_at - workflow.now()).total_seconds()
        try:
            if left > 0:
                await workflow.wait_condition(lambda: not waiting(), timeout=left)
        except TimeoutError:
            pass
        if waiting():
            workflow.logger.info("reminder %s: event %s did not come in time", reminder.id, reminder.on_event)
            self._timers.pop(reminder.id, None)
            self._keep([r for r in self._conversation.state.reminders if r.id != reminder.id])
            return None
        return next((r for r in self._conversation.state.reminders if r.id == reminder.id), None)

    async def _send(self, reminder: Reminder) -> None:
        conversation = self._conversation
        state = conversation.state
        if all(r.id != reminder.id for r in state.reminders):
            return  # cancelled while it waited for its turn
        self._keep([r for r in state.reminders if r.id != reminder.id])
        self._timers.pop(reminder.id, None)
        index = conversation.take_index()
        await self._recorder.record_message(index, "bot", reminder.text, None, "bot_message")
        self._outbox.send(f"reminder-{reminder.id}", reminder.text)
