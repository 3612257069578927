"""The SQL store on SQLite and on the real PostgreSQL: idempotent writes, listing, transcripts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy.engine import Engine

from dialogue import store
from workflows.contracts import (
    IntentPrediction,
    NluResult,
    RecordConversationRequest,
    RecordTurnRequest,
    Reply,
    Source,
)

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def turn(conversation_id: str, index: int, *, at: datetime = T0) -> RecordTurnRequest:
    return RecordTurnRequest(
        conversation_id=conversation_id,
        turn_id=f"{conversation_id}-turn-{index}",
        turn_index=index,
        user_text=f"question {index}",
        reply=Reply(
            text=f"answer {index}",
            sources=[Source(document_id="doc", title="Doc", snippet="...", score=1.5)],
        ),
        nlu=NluResult(intent=IntentPrediction(name="shipping", confidence=0.75)),
        at=at + timedelta(seconds=index),
    )


def test_record_turn_twice_writes_each_row_once(engine: Engine) -> None:
    store.record_turn(engine, turn("c1", 0))
    store.record_turn(engine, turn("c1", 0))  # a retried activity

    rows, total = store.read_messages(engine, "c1", limit=10, offset=0)
    assert total == 2
    assert [(m.role, m.text) for m in rows] == [("user", "question 0"), ("bot", "answer 0")]
    assert rows[1].sources[0]["document_id"] == "doc"
    conversation = store.get_conversation(engine, "c1")
    assert conversation is not None
    assert conversation.turn_count == 1
    assert conversation.last_intent == "shipping"


def test_conversations_sharing_an_idempotency_key_keep_their_own_transcripts(engine: Engine) -> None:
    first, second = turn("c5", 0), turn("c6", 0)
    second.turn_id = first.turn_id = "client-key-1"
    store.record_turn(engine, first)
    store.record_turn(engine, second)
    assert store.read_messages(engine, "c5", limit=10, offset=0)[1] == 2
    assert store.read_messages(engine, "c6", limit=10, offset=0)[1] == 2


def test_transcript_is_in_turn_order_and_paginates(engine: Engine) -> None:
    for index in (2, 0, 1):  # recorded out of order
        store.record_turn(engine, turn("c2", index))

    first, total = store.read_messages(engine, "c2", limit=4, offset=0)
    rest, _ = store.read_messages(engine, "c2", limit=4, offset=4)
    assert total == 6
    assert [m.text for m in [*first, *rest]] == [
        "question 0",
        "answer 0",
        "question 1",
        "answer 1",
        "question 2",
        "answer 2",
    ]
    assert store.get_conversation(engine, "c2").turn_count == 3  # type: ignore[union-attr]


def test_a_late_retry_of_an_old_turn_does_not_lower_the_turn_count(engine: Engine) -> None:
    store.record_turn(engine, turn("c3", 0))
    store.record_turn(engine, turn("c3", 1))
    store.record_turn(engine, turn("c3", 0))
    assert store.get_conversation(engine, "c3").turn_count == 2  # type: ignore[union-attr]


def test_record_conversation_creates_then_ends_and_keeps_dates_aware(engine: Engine) -> None:
    store.record_conversation(engine, RecordConversationRequest(conversation_id="c4", status="active", at=T0))
    store.record_turn(engine, turn("c4", 0))
    store.record_conversation(
        engine,
        RecordConversationRequest(
            conversation_id="c4",
            status="ended",
            turn_count=1,
            at=T0 + timedelta(minutes=5),
            ended_reason="ended_by_client",
        ),
    )
    conversation = store.get_conversation(engine, "c4")
    assert conversation is not None
    assert (conversation.status, conversation.ended_reason, conversation.turn_count) == (
        "ended",
        "ended_by_client",
        1,
    )
    assert conversation.created_at == T0
    assert conversation.updated_at == T0 + timedelta(minutes=5)


def test_list_conversations_filters_by_tenant_and_status_newest_first(engine: Engine) -> None:
    for index, key in enumerate(["t1/a", "t1/b", "t1/c", "t10/d", "t2/e"]):
        store.record_turn(engine, turn(key, 0, at=T0 + timedelta(hours=index)))
    store.record_conversation(
        engine,
        RecordConversationRequest(conversation_id="t1/b", status="ended", at=T0 + timedelta(hours=5)),
    )

    everything, total = store.list_conversations(engine, tenant="t1", status=None, limit=10, offset=0)
    active, active_total = store.list_conversations(engine, tenant="t1", status="active", limit=10, offset=0)
    page, _ = store.list_conversations(engine, tenant="t1", status=None, limit=1, offset=1)
    assert [c.id for c in everything] == ["t1/b", "t1/c", "t1/a"]  # not t10's nor t2's
    assert total == 3
    assert [c.id for c in active] == ["t1/c", "t1/a"]
    assert active_total == 2
    assert [c.id for c in page] == ["t1/c"]
