"""`record_turn`, `record_message` and `record_conversation`: the SQL store's read side, written idempotently.

The workflow retries them until the store takes them (an outage only delays the transcript), so an
error says whether retrying can help: the store unreachable, locked or timing out can; the store
refusing the data itself cannot (`Unrecordable`, non-retryable).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.engine import Engine
from sqlalchemy.exc import DataError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from dialogue.model.contracts import (
    UNRECORDABLE,
    RecordConversationRequest,
    Recorded,
    RecordMessageRequest,
    RecordTurnRequest,
)
from dialogue.platform import store


@contextmanager
def _refused_for_good() -> Iterator[None]:
    try:
        yield
    except DataError as err:  # a value the database will never accept: no retry can fix it
        raise ApplicationError(str(err.orig), type=UNRECORDABLE, non_retryable=True) from err


class RecordActivities:
    """Synchronous (database drivers block); the worker runs them on a thread pool."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @activity.defn(name="record_turn")
    def record_turn(self, request: RecordTurnRequest) -> Recorded:
        """Write the turn to the transcript and the conversation index."""
        with _refused_for_good():
            store.record_turn(self._engine, request)
        messages = 1 if request.reply is None else 2
        return Recorded(
            conversation_id=request.conversation_id, turn_index=request.turn_index, messages=messages
        )

    @activity.defn(name="record_message")
    def record_message(self, request: RecordMessageRequest) -> Recorded:
        """Write a person's message or a handoff to the transcript and the event log."""
        with _refused_for_good():
            store.record_message(self._engine, request)
        return Recorded(conversation_id=request.conversation_id, turn_index=request.turn_index, messages=1)

    @activity.defn(name="record_conversation")
    def record_conversation(self, request: RecordConversationRequest) -> Recorded:
        """Create or close the conversation's index row."""
        with _refused_for_good():
            store.record_conversation(self._engine, request)
        return Recorded(conversation_id=request.conversation_id, status=request.status)
