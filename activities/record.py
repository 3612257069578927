"""`record_turn` and `record_conversation`: the SQL store's read side, written idempotently."""

from __future__ import annotations

from sqlalchemy.engine import Engine
from temporalio import activity

from dialogue import store
from workflows.contracts import RecordConversationRequest, Recorded, RecordMessageRequest, RecordTurnRequest


class RecordActivities:
    """Synchronous (database drivers block); the worker runs them on a thread pool."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @activity.defn(name="record_turn")
    def record_turn(self, request: RecordTurnRequest) -> Recorded:
        """Write the turn to the transcript and the conversation index."""
        store.record_turn(self._engine, request)
        messages = 1 if request.reply is None else 2
        return Recorded(
            conversation_id=request.conversation_id, turn_index=request.turn_index, messages=messages
        )

    @activity.defn(name="record_message")
    def record_message(self, request: RecordMessageRequest) -> Recorded:
        """Write a person's message or a handoff to the transcript and the event log."""
        store.record_message(self._engine, request)
        return Recorded(conversation_id=request.conversation_id, turn_index=request.turn_index, messages=1)

    @activity.defn(name="record_conversation")
    def record_conversation(self, request: RecordConversationRequest) -> Recorded:
        """Create or close the conversation's index row."""
        store.record_conversation(self._engine, request)
        return Recorded(conversation_id=request.conversation_id, status=request.status)
