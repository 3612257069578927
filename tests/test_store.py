"""The SQL store on SQLite and on the real PostgreSQL: idempotent writes, listing, transcripts."""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from dialogue.model.contracts import (
    IntentPrediction,
    Lineage,
    NluResult,
    RecordConversationRequest,
    RecordTurnRequest,
    Reply,
    Source,
)
from dialogue.platform import events, store
from dialogue.platform.db import AuditEntry, BotTurn, get_engine, init_db
from dialogue.security.identity import audit, create_key

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


def test_a_provisional_reply_never_replaces_the_one_the_workflow_wrote(engine: Engine) -> None:
    """`respond_here` writes its reply provisionally; the workflow's write for the same turn (the fallback a
    deadline gave) replaces it, and a provisional write landing after it changes nothing."""

    def write(conversation_id: str, text: str, *, provisional: bool) -> None:
        entry = turn(conversation_id, 0)
        assert entry.reply is not None
        entry.reply.text = text
        entry.lineage = Lineage(generator="template", bot="demo", bot_version="v1", action=text)
        entry.provisional = provisional
        store.record_turn(engine, entry)

    def kept(conversation_id: str) -> tuple[str, str | None]:
        rows, total = store.read_messages(engine, conversation_id, limit=10, offset=0)
        assert total == 2
        with Session(engine) as session:
            counted = session.exec(select(BotTurn).where(BotTurn.conversation_id == conversation_id)).one()
        return rows[1].text, "fallback" if counted.fallback else None

    write("p1", "composed here", provisional=True)
    write("p1", "fallback", provisional=False)
    assert kept("p1") == ("fallback", "fallback")

    write("p2", "fallback", provisional=False)
    write("p2", "composed here", provisional=True)  # the step's write, late
    assert kept("p2") == ("fallback", "fallback")

    write("p3", "composed here", provisional=True)
    write("p3", "composed here", provisional=True)  # a retried step
    assert kept("p3") == ("composed here", None)


def test_what_is_held_of_a_user_is_theirs_in_their_tenant_alone(engine: Engine) -> None:
    for key, user in (("t1/a", "ann"), ("t1/b", "bob"), ("t10/a", "ann"), ("t1/c", None)):
        store.record_conversation(
            engine, RecordConversationRequest(conversation_id=key, status="active", at=T0, user=user)
        )
        store.record_turn(engine, turn(key, 0))
    held = store.held_for_user(engine, tenant="t1", user="ann")
    assert [h.conversation.id for h in held] == ["t1/a"]  # not t10's ann, not bob's, not the ownerless one
    assert [(m.role, m.text) for m in held[0].messages] == [("user", "question 0"), ("bot", "answer 0")]
    assert store.held_for_user(engine, tenant="t1", user="nobody") == []
    # Erasing ann of t1 keeps whose each conversation was until the end, then forgets it; t10's ann stays.
    assert store.conversations_of(engine, tenant="t1", user="ann") == ["t1/a"]
    store.erase_conversation(engine, "t1/a", T0, keep_owner=True)
    assert store.conversations_of(engine, tenant="t1", user="ann") == ["t1/a"]
    assert store.forget_owners(engine, tenant="t1", user="ann") == 1
    assert store.conversations_of(engine, tenant="t1", user="ann") == []
    assert store.conversations_of(engine, tenant="t10", user="ann") == ["t10/a"]


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
    assert [c.id for c, _ in everything] == ["t1/b", "t1/c", "t1/a"]  # not t10's nor t2's
    assert total == 3
    assert [c.id for c, _ in active] == ["t1/c", "t1/a"]
    assert active_total == 2
    assert [c.id for c, _ in page] == ["t1/c"]


def test_list_conversations_by_intent_degraded_answers_and_part_of_the_id(engine: Engine) -> None:
    store.record_turn(engine, turn("t1/order-1", 0))
    store.record_turn(engine, turn("t1/order-1", 1).model_copy(update={"degraded": True}))
    store.record_turn(engine, turn("t1/order-1", 2).model_copy(update={"degraded": True}))
    refund = turn("t1/refund_%", 0)
    store.record_turn(
        engine,
        refund.model_copy(update={"nlu": NluResult(intent=IntentPrediction(name="refund", confidence=0.9))}),
    )
    store.record_turn(engine, turn("t1/refundX", 0))
    store.record_turn(engine, turn("t2/order-2", 0).model_copy(update={"degraded": True}))

    def ids(**filters: Any) -> dict[str, int]:
        rows, total = store.list_conversations(engine, tenant="t1", limit=10, offset=0, **filters)
        assert total == len(rows)
        return {conversation.id: degraded for conversation, degraded in rows}

    assert ids() == {"t1/order-1": 2, "t1/refund_%": 0, "t1/refundX": 0}  # degraded answers counted
    assert ids(degraded=True) == {"t1/order-1": 2}  # not t2's
    assert ids(degraded=False) == {"t1/refund_%": 0, "t1/refundX": 0}
    assert ids(intent="refund") == {"t1/refund_%": 0}
    assert ids(contains="der") == {"t1/order-1": 2}
    assert ids(contains="ORDER") == {"t1/order-1": 2}  # as a person types it, on both databases
    assert ids(contains="_%") == {"t1/refund_%": 0}  # taken literally, not as wildcards
    assert ids(contains="t1") == {}  # the tenant is not part of the id a client sees


def test_tenant_listing_holds_under_a_linguistic_collation(postgres_url: str) -> None:
    # The session's database collates like en_US, which ignores the "/" at first: there "t1/c"
    # sorts after "t10", and a range of keys taken in the database's order would lose it.
    engine = get_engine(postgres_url)
    init_db(engine)
    test_list_conversations_filters_by_tenant_and_status_newest_first(engine)
    store.record_feedback(engine, "t1/c", "t1/c-turn-0", rating="up", comment=None, author="key:a", at=T0)
    store.record_feedback(engine, "t10/d", "t10/d-turn-0", rating="up", comment=None, author="key:a", at=T0)
    assert [f.conversation_id for f, _, _ in store.rated_turns(engine, tenant="t1")] == ["t1/c"]


def test_concurrent_appends_to_one_conversation_number_every_event_once(engine: Engine) -> None:
    def write(writer: int) -> list[int]:
        return [
            number
            for i in range(8)
            for number in events.append(
                engine, "c8", [events.NewEvent(kind="token", data={"writer": writer, "i": i})] * 2
            )
        ]

    with ThreadPoolExecutor(max_workers=4) as pool:
        numbers = [n for written in pool.map(write, range(4)) for n in written]

    assert sorted(numbers) == list(range(1, 65))
    rows = events.read(engine, "c8")
    assert [row.seq for row in rows] == list(range(1, 65))
    for writer in range(4):  # each writer's events in the order it wrote them
        mine = [row.data["i"] for row in rows if row.data["writer"] == writer]
        assert mine == sorted(mine)


def test_a_score_that_is_not_a_number_is_stored_as_null(engine: Engine) -> None:
    # PostgreSQL's json type refuses the bare NaN that json.dumps would write.
    odd = turn("c9", 0)
    assert odd.reply is not None
    odd.reply.sources[0].score = math.nan
    store.record_turn(engine, odd)
    rows, _ = store.read_messages(engine, "c9", limit=10, offset=0)
    assert rows[1].sources[0]["score"] is None


def test_values_longer_than_their_columns_are_kept_within_them(engine: Engine) -> None:
    # PostgreSQL enforces VARCHAR lengths (SQLite does not): the longest key and turn id the API
    # accepts, and a token subject of the caller's choosing, must not fail the write.
    key, turn_id, subject = f"{'t' * 63}/{'c' * 128}", "k" * 200, "token:" + "s" * 500
    store.record_turn(engine, turn(key, 0).model_copy(update={"turn_id": turn_id}))
    store.record_feedback(engine, key, turn_id, rating="down", comment=None, author=subject, at=T0)
    store.record_feedback(engine, key, turn_id, rating="up", comment="better", author=subject, at=T0)
    rated = store.get_feedback(engine, key, turn_id)
    assert rated is not None and (rated.rating, rated.turn_id) == ("up", turn_id)
    assert len(store.rated_turns(engine)) == 1
    audit(engine, tenant="t" * 63, actor=subject, action="erase", target=key)
    with Session(engine) as session:
        assert session.exec(select(AuditEntry)).one().actor == subject[:200]
    try:
        create_key(engine, tenant="acme", scope="client", name="n" * 201)
    except ValueError as err:
        assert "name" in str(err)
    else:
        raise AssertionError("a key name longer than its column was accepted")


def test_a_conversation_and_its_first_turn_recorded_at_once_make_one_row(engine: Engine) -> None:
    """The workflow records a new conversation and, delivered with its start, its first turn at the same
    time: neither write may fail on the other's insert of the conversation's row."""
    for number in range(20):
        conversation_id = f"race-{number}"
        start = threading.Barrier(2)

        def record_start(conversation_id: str = conversation_id, start: threading.Barrier = start) -> None:
            start.wait()
            store.record_conversation(
                engine, RecordConversationRequest(conversation_id=conversation_id, status="active", at=T0)
            )

        def record_first_turn(
            conversation_id: str = conversation_id, start: threading.Barrier = start
        ) -> None:
            start.wait()
            store.record_turn(engine, turn(conversation_id, 0))

        with ThreadPoolExecutor(max_workers=2) as pool:
            futures = [pool.submit(record_start), pool.submit(record_first_turn)]
            for future in futures:
                future.result()  # raises what the write raised
        conversation = store.get_conversation(engine, conversation_id)
        assert conversation is not None and conversation.turn_count == 1
