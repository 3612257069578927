"""`record_turn`, `record_message` and `record_conversation`: the SQL store's read side, written idempotently.

The workflow retries them until the store takes them (an outage only delays the transcript), so an
error says whether retrying can help: the store unreachable, locked or timing out can; the store
refusing the data itself cannot (`Unrecordable`, non-retryable).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from sqlalchemy.engine import Engine
from sqlalchemy.exc import DataError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from dialogue.brain.memory import stated_in
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


def write_turn(engine: Engine, turn: RecordTurnRequest, memory_days: float | None) -> None:
    """The turn into the transcript, and what its user said of themself into their memory (kept
    `memory_days`, the bot's retention period, unless said again; kept only with their consent)."""
    stated = stated_in(turn)
    expires = turn.at + timedelta(days=memory_days) if stated and memory_days is not None else None
    store.record_turn(engine, turn, remembered=stated, memory_expires_at=expires)


class RecordActivities:
    """Synchronous (database drivers block); the worker runs them on a thread pool."""

    def __init__(self, engine: Engine, memory_days: float | None = None) -> None:
        self._engine = engine
        self._memory_days = memory_days

    @activity.defn(name="record_turn")
    def record_turn(self, request: RecordTurnRequest) -> Recorded:
        """Write the turn to the transcript and the conversation index."""
        with _refused_for_good():
            write_turn(self._engine, request, self._memory_days)
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
