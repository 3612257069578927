"""The transcript's writes to the store's read side. A write the store cannot take now is kept in the
workflow's state and made later, in order, retried until the store takes it: a reply neither waits for
the store nor fails on it, and no message is lost."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError, FailureError

from workflows.conversation.options import RECORD_INLINE, RECORD_UNTIL_DONE, run_step
from workflows.conversation.state import Conversation

with workflow.unsafe.imports_passed_through():
    from activities.record import RecordActivities
    from dialogue.model.contracts import (
        UNRECORDABLE,
        RecordConversationRequest,
        RecordMessageRequest,
        RecordTurnRequest,
    )


class Write(NamedTuple):
    """A write to the store's read side that must happen: the record activity and its request."""

    activity: Callable[..., Any]
    request: RecordTurnRequest | RecordMessageRequest | RecordConversationRequest
    local: bool = False
    """Inline as a local activity (record_turn, since the local-steps patch) rather than a regular one."""


def turn_write(request: RecordTurnRequest, *, local: bool) -> Write:
    return Write(RecordActivities.record_turn, request, local=local)


def conversation_write(conversation: Conversation, *, local: bool = False) -> Write:
    """The conversation's own row in the store's index: its status and size."""
    state = conversation.state
    return Write(
        RecordActivities.record_conversation,
        RecordConversationRequest(
            conversation_id=conversation.input.key,
            status=state.status,
            turn_count=state.turn_count,
            at=state.updated_at,
            ended_reason=state.ended_reason,
            user=conversation.input.user,
        ),
        local=local,
    )


class Recorder:
    def __init__(self, conversation: Conversation) -> None:
        self._conversation = conversation
        self.unrecorded: list[Write] = []
        """Writes the store could not take when they were made, oldest first (see `record`)."""
        self._later: asyncio.Future[None] | None = None

    async def record(self, write: Write) -> None:
        """Write to the store now if it takes the write within RECORD_INLINE; otherwise keep the write and
        let `_record_later` make it. Never raises for the store: the user's reply neither waits for nor
        fails on it. While writes are waiting, new ones queue behind them, so the store gets them in order."""
        if not self.unrecorded:
            try:
                await run_step(write.local, write.activity, write.request, RECORD_INLINE)
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
        self.unrecorded.append(write)
        self._conversation.state.unrecorded = len(self.unrecorded)
        self._conversation.show()
        if self._later is None:
            self._later = asyncio.ensure_future(self._record_later())

    async def record_message(
        self,
        index: int,
        role: Literal["agent", "system", "bot"],
        text: str,
        author: str | None,
        event: Literal["agent_message", "handoff", "handback", "bot_message"],
    ) -> None:
        """A message that is not a turn's (a person's, a handoff's notice, a reminder), shown to operators
        and written to the transcript in order with the turns."""
        conversation = self._conversation
        conversation.show()
        conversation.listing.message(conversation.state)
        await self.record(
            Write(
                RecordActivities.record_message,
                RecordMessageRequest(
                    conversation_id=conversation.input.key,
                    turn_id=f"{event}-{index}",
                    turn_index=index,
                    role=role,
                    text=text,
                    author=author,
                    at=conversation.state.updated_at,
                    event=event,
                ),
            )
        )

    def recorded(self) -> bool:
        """Nothing is owed to the store. A recorder that died of a bug raises here: the workflow task fails
        and is retried (a fixed worker takes it over) instead of the conversation waiting for ever."""
        if self._later is not None and self._later.done() and not self._later.cancelled():
            self._later.result()
        return not self.unrecorded

    async def _record_later(self) -> None:
        """Make the writes the store could not take, oldest first, each until it succeeds."""
        while True:
            await workflow.wait_condition(lambda: bool(self.unrecorded))
            await record_until_done(self.unrecorded[0])
            self.unrecorded.pop(0)
            self._conversation.state.unrecorded = len(self.unrecorded)
            self._conversation.show()


async def record_until_done(write: Write) -> None:
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


def _activity_name(write: Write) -> str:
    return str(getattr(write.activity, "__name__", "a record"))
