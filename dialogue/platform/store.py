"""Reads and idempotent writes of the SQL store; the activities write, the API reads."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import ColumnElement, bindparam, delete, func
from sqlalchemy import select as sql_select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, col, select

from dialogue.model.contracts import RecordConversationRequest, RecordMessageRequest, RecordTurnRequest
from dialogue.platform import events, memory, version_numbers
from dialogue.platform.db import (
    BotTurn,
    ChannelDelivery,
    Conversation,
    ConversationEvent,
    ConversationOwner,
    Feedback,
    McpToolPin,
    Message,
    Satisfaction,
    ToolResult,
)

ERASED = "erased"
"""The status of a conversation's tombstone: its content is gone and nothing is written for it again."""
# Column sizes: PostgreSQL refuses longer values where SQLite would keep them.
MAX_ID = 300
MAX_AUTHOR = 200


def record_turn(
    engine: Engine,
    turn: RecordTurnRequest,
    *,
    remembered: Mapping[str, str] | None = None,
    memory_expires_at: datetime | None = None,
) -> None:
    """Write a turn's two messages and bring the conversation's index row up to date; with `remembered`
    (what the user said of themself, by kind), keep it in their memory if they consented, in the same
    transaction as their words.

    Idempotent: rows are keyed by conversation, turn index and role, so a retried activity
    rewrites the same rows (and two conversations whose clients chose the same idempotency
    key never share one); the turn count only ever grows.
    """
    with Session(engine) as session:
        conversation = _conversation_row(session, turn.conversation_id, turn.at)
        if conversation.status == ERASED:
            return  # erased while the turn ran: nothing of it is written again
        if remembered and turn.user is not None:
            memory.remember_in(
                session,
                turn.conversation_id,
                turn.user,
                remembered,
                turn_id=turn.turn_id,
                at=turn.at,
                expires_at=memory_expires_at,
            )
        conversation.turn_count = max(conversation.turn_count, turn.turn_index + 1)
        if turn.turn_index + 1 >= conversation.turn_count:
            if turn.reply is not None:
                conversation.last_intent = turn.nlu.intent.name
            conversation.updated_at = max(conversation.updated_at, turn.at)
        session.add(conversation)
        common: dict[str, Any] = {
            "conversation_id": turn.conversation_id,
            "turn_id": turn.turn_id,
            "turn_index": turn.turn_index,
            "created_at": turn.at,
        }
        key = f"{turn.conversation_id}:{turn.turn_index}"
        if turn.resumes is None:  # an agent going on after approvals answers no message of the user's
            _put(session, Message, id=f"{key}:user", role="user", text=turn.user_text, **common)
        if turn.reply is None:  # interrupted, or a person answers: the user's words alone
            session.commit()
            return
        # A provisional reply (`respond_here`'s) never replaces one the workflow wrote for the turn.
        final = not turn.provisional
        _put(
            session,
            Message,
            overwrite=final,
            id=f"{key}:bot",
            role="bot",
            text=turn.reply.text,
            intent=turn.nlu.intent.name,
            confidence=turn.nlu.intent.confidence,
            degraded=turn.degraded,
            sources=[source.model_dump(mode="json") for source in turn.reply.sources],
            # The stored lineage adds the NLU result, which the turn carries once, beside the lineage.
            lineage=turn.lineage.model_dump(mode="json") | {"nlu": turn.nlu.model_dump(mode="json")}
            if turn.lineage
            else None,
            **common,
        )
        counted = (
            version_numbers.bot_turn(
                turn.conversation_id,
                turn.turn_id,
                turn.at,
                degraded=turn.degraded,
                nlu=turn.nlu,
                lineage=turn.lineage,
            )
            if turn.lineage
            else None
        )
        if counted is not None:  # the numbers per version (`version_numbers`)
            _put(session, BotTurn, overwrite=final, **counted.model_dump())
        session.commit()
    if turn.resumes is not None and turn.reply is not None:
        # No one asked for this answer in a request of their own: stream clients of the conversation get it.
        _announce(
            engine,
            turn.conversation_id,
            events.NewEvent(
                kind="bot_message",
                turn_id=turn.turn_id,
                data={
                    "turn_index": turn.turn_index,
                    "role": "bot",
                    "text": turn.reply.text,
                    "author": None,
                    "at": turn.at.isoformat(),
                    "resumes": turn.resumes,
                },
            ),
        )


def _put(
    session: Session, model: type[Message] | type[BotTurn], *, overwrite: bool = True, **values: Any
) -> None:
    """Insert a row of `model`, or overwrite the row with its key (unless not to `overwrite`: then the row
    there stays), in one statement: what `Session.merge` did in two (a read, then a write), without
    building the model object, with the statement compiled once (bench/profile.py: the merges were most
    of a turn's recording CPU)."""
    defaults = _defaults(model)
    session.execute(_upsert(session.get_bind().dialect.name, model, overwrite), defaults | values)


@cache
def _defaults(model: type[SQLModel]) -> dict[str, Any]:
    return {
        name: field.get_default(call_default_factory=True)
        for name, field in model.model_fields.items()
        if not field.is_required()
    }


@cache
def _upsert(dialect: str, model: type[SQLModel], overwrite: bool = True) -> Any:
    table = model.__table__  # type: ignore[attr-defined]
    keys = [column.name for column in table.primary_key.columns]
    statement = (sqlite_insert if dialect == "sqlite" else postgresql_insert)(table)
    if not overwrite:
        return statement.on_conflict_do_nothing(index_elements=keys)
    return statement.on_conflict_do_update(
        index_elements=keys,
        set_={
            column.name: statement.excluded[column.name]
            for column in table.columns
            if column.name not in keys
        },
    )


def _announce(engine: Engine, conversation_id: str, event: events.NewEvent) -> None:
    """Append an event once: a retried activity finds it there already."""
    if not events.has(engine, conversation_id, event.turn_id, event.kind):
        events.append(engine, conversation_id, [event])


def keep_tool_result(engine: Engine, result: ToolResult) -> None:
    """Keep a tool call's whole result; idempotent (a retried call writes the same row)."""
    with Session(engine) as session:
        conversation = session.get(Conversation, result.conversation_id)
        if conversation is not None and conversation.status == ERASED:
            return
        session.merge(result)
        session.commit()


def tool_result(engine: Engine, conversation_id: str, call_id: str) -> ToolResult | None:
    with Session(engine) as session:
        return session.get(ToolResult, (conversation_id, call_id))


def mcp_tool_pins(engine: Engine, bot: str, server: str) -> dict[str, str]:
    """The digests an MCP server's tools were pinned with for a bot, by tool name."""
    with Session(engine) as session:
        rows = session.exec(
            select(McpToolPin).where(McpToolPin.bot == bot, McpToolPin.server == server)
        ).all()
        return {row.tool: row.sha256 for row in rows}


def pin_mcp_tools(engine: Engine, bot: str, server: str, digests: dict[str, str], *, at: datetime) -> None:
    """Pin tools (name → digest); a tool already pinned gets the new digest (the bot consented)."""
    with Session(engine) as session:
        for tool, sha256 in digests.items():
            session.merge(McpToolPin(bot=bot, server=server, tool=tool, sha256=sha256, pinned_at=at))
        session.commit()


def record_message(engine: Engine, message: RecordMessageRequest) -> None:
    """Write an agent's message or a handoff to the transcript, and append it to the event log; idempotent."""
    with Session(engine) as session:
        conversation = session.get(Conversation, message.conversation_id)
        if conversation is not None and conversation.status == ERASED:
            return
        if conversation is not None:
            conversation.turn_count = max(conversation.turn_count, message.turn_index + 1)
            conversation.updated_at = max(conversation.updated_at, message.at)
            session.add(conversation)
        session.merge(
            Message(
                id=f"{message.conversation_id}:{message.turn_index}:{message.role}",
                conversation_id=message.conversation_id,
                turn_id=message.turn_id,
                turn_index=message.turn_index,
                role=message.role,
                text=message.text,
                author=message.author,
                created_at=message.at,
            )
        )
        session.commit()
    _announce(
        engine,
        message.conversation_id,
        events.NewEvent(
            kind=message.event,
            turn_id=message.turn_id,
            data={
                "turn_index": message.turn_index,
                "role": message.role,
                "text": message.text,
                "author": message.author,
                "at": message.at.isoformat(),
            },
        ),
    )


def record_conversation(engine: Engine, change: RecordConversationRequest) -> None:
    """Create the index row if absent, or record the conversation's end; idempotent."""
    with Session(engine) as session:
        conversation = _conversation_row(session, change.conversation_id, change.at)
        if conversation.status == ERASED:
            return
        if change.user is not None and session.get(ConversationOwner, change.conversation_id) is None:
            # Its user never changes: the first record of it stands (a retry writes the same).
            session.add(
                ConversationOwner(
                    conversation_id=change.conversation_id, user=change.user, created_at=change.at
                )
            )
        conversation.turn_count = max(conversation.turn_count, change.turn_count)
        if change.status == "ended":
            conversation.status = "ended"
            conversation.ended_reason = change.ended_reason
            conversation.updated_at = max(conversation.updated_at, change.at)
        session.add(conversation)
        session.commit()


def _conversation_row(session: Session, conversation_id: str, at: datetime) -> Conversation:
    """The conversation's index row, made if it is absent, locked for this transaction (PostgreSQL).

    The first turn's record and the conversation's own can run at once (a turn is delivered with the
    workflow's start): each inserts the row unless it exists, in one statement, so neither fails on
    the other's insert. A turn of a conversation that has its row (every turn but the first) reads it
    only."""
    conversation = session.get(Conversation, conversation_id, with_for_update=True)
    if conversation is not None:
        return conversation
    row = Conversation(id=conversation_id, created_at=at, updated_at=at).model_dump()
    insert = sqlite_insert if session.get_bind().dialect.name == "sqlite" else postgresql_insert
    session.execute(insert(Conversation).values(**row).on_conflict_do_nothing(index_elements=["id"]))
    made = session.get(Conversation, conversation_id, with_for_update=True, populate_existing=True)
    assert made is not None  # inserted just now, or by the other writer
    return made


def get_conversation(engine: Engine, conversation_id: str) -> Conversation | None:
    with Session(engine) as session:
        return session.get(Conversation, conversation_id)


def conversation_status(engine: Engine, conversation_id: str) -> str | None:
    """The conversation's status in the index; None without a row. Read before every turn: one column
    over a plain connection, no ORM session or object (a third of the CPU of `get_conversation`)."""
    with engine.connect() as connection:
        status: str | None = connection.execute(_STATUS, {"id": conversation_id}).scalar_one_or_none()
        return status


_STATUS = sql_select(Conversation.__table__.c.status).where(  # type: ignore[attr-defined]
    Conversation.__table__.c.id == bindparam("id")  # type: ignore[attr-defined]
)


def owner(engine: Engine, conversation_id: str) -> str | None:
    """The end user the conversation belongs to, as recorded; None when it has none (or is not recorded)."""
    with Session(engine) as session:
        row = session.get(ConversationOwner, conversation_id)
        return row.user if row is not None else None


def list_conversations(
    engine: Engine,
    *,
    tenant: str,
    user: str | None = None,
    status: str | None = None,
    intent: str | None = None,
    degraded: bool | None = None,
    contains: str | None = None,
    limit: int,
    offset: int,
) -> tuple[list[tuple[Conversation, int]], int]:
    """A page of a tenant's conversations (of its end user `user` only, when given), most recently updated
    first, each with its number of degraded answers, and how many match in all. `contains` is matched in
    the id, literally."""
    degraded_count = (
        select(func.count())
        .select_from(Message)
        .where(col(Message.conversation_id) == col(Conversation.id), col(Message.degraded))
        .correlate(Conversation)
        .scalar_subquery()
    )
    where = [*_in_tenant(engine, col(Conversation.id), tenant)]
    if user is not None:
        owned = select(ConversationOwner.conversation_id).where(col(ConversationOwner.user) == user)
        where.append(col(Conversation.id).in_(owned))
    if status is not None:
        where.append(col(Conversation.status) == status)
    if intent is not None:
        where.append(col(Conversation.last_intent) == intent)
    if degraded is not None:
        where.append(degraded_count > 0 if degraded else degraded_count == 0)
    if contains:
        # After the tenant's `tenant/` prefix; `%` and `_` typed by a person are meant literally.
        # Case-insensitive on both databases (SQLite's LIKE is, PostgreSQL's is not: ILIKE there).
        escaped = contains.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        where.append(col(Conversation.id).ilike(f"{tenant}/%{escaped}%", escape="\\"))
    with Session(engine) as session:
        query = (
            select(Conversation, degraded_count)
            .where(*where)
            .order_by(col(Conversation.updated_at).desc(), col(Conversation.id))
            .offset(offset)
            .limit(limit)
        )
        count = select(func.count()).select_from(Conversation).where(*where)
        rows = [(conversation, int(number)) for conversation, number in session.exec(query).all()]
        return rows, session.exec(count).one()


@dataclass(frozen=True)
class HeldConversation:
    """Everything the store holds of one conversation: its index row, transcript (with each answer's
    lineage), ratings, score and the tool results kept for it."""

    conversation: Conversation
    messages: Sequence[Message]
    feedback: Sequence[Feedback]
    satisfaction: Satisfaction | None
    tool_results: Sequence[ToolResult]


def held_for_user(engine: Engine, *, tenant: str, user: str) -> list[HeldConversation]:
    """What the store holds of one end user of `tenant`: each conversation recorded as theirs, oldest first
    (`GET /v1/users/{user}/export`). Another tenant's user of that name is not this one."""
    with Session(engine) as session:
        owned = select(ConversationOwner.conversation_id).where(col(ConversationOwner.user) == user)
        conversations = session.exec(
            select(Conversation)
            .where(col(Conversation.id).in_(owned), *_in_tenant(engine, col(Conversation.id), tenant))
            .order_by(col(Conversation.created_at), col(Conversation.id))
        ).all()
        held = []
        for conversation in conversations:
            key = conversation.id
            messages = session.exec(
                select(Message)
                .where(col(Message.conversation_id) == key)
                .order_by(col(Message.turn_index), col(Message.role).desc())
            ).all()
            feedback = session.exec(
                select(Feedback)
                .where(col(Feedback.conversation_id) == key)
                .order_by(col(Feedback.created_at))
            ).all()
            results = session.exec(
                select(ToolResult)
                .where(col(ToolResult.conversation_id) == key)
                .order_by(col(ToolResult.created_at))
            ).all()
            held.append(
                HeldConversation(conversation, messages, feedback, session.get(Satisfaction, key), results)
            )
        return held


def read_messages(
    engine: Engine, conversation_id: str, *, limit: int, offset: int
) -> tuple[Sequence[Message], int]:
    """A page of a transcript in turn order (user before bot), and its length."""
    with Session(engine) as session:
        where = col(Message.conversation_id) == conversation_id
        query = (
            select(Message)
            .where(where)
            # One role per place but for user and bot: "user" > "bot", so descending puts the user first.
            .order_by(col(Message.turn_index), col(Message.role).desc())
            .offset(offset)
            .limit(limit)
        )
        total = session.exec(select(func.count()).select_from(Message).where(where)).one()
        return session.exec(query).all(), total


def recent_messages(
    engine: Engine, conversation_id: str, *, start: int, end: int, limit: int
) -> Sequence[tuple[int, str, str]]:
    """The newest `limit` transcript rows in places `start` to `end` (excluded), newest first, as (place,
    role, text): only the columns an LLM's context needs (a reply's lineage JSON is most of a row)."""
    with Session(engine) as session:
        query = (
            select(Message.turn_index, Message.role, Message.text)
            .where(
                col(Message.conversation_id) == conversation_id,
                col(Message.turn_index) >= start,
                col(Message.turn_index) < end,
            )
            .order_by(col(Message.turn_index).desc(), col(Message.role))
            .limit(limit)
        )
        return session.exec(query).all()


def conversations_of(engine: Engine, *, tenant: str, user: str) -> list[str]:
    """The keys of every conversation recorded as this end user's in `tenant`, erased ones included."""
    with Session(engine) as session:
        query = (
            select(ConversationOwner.conversation_id)
            .where(
                col(ConversationOwner.user) == user,
                *_in_tenant(engine, col(ConversationOwner.conversation_id), tenant),
            )
            .order_by(col(ConversationOwner.conversation_id))
        )
        return list(session.exec(query).all())


def forget_owners(engine: Engine, *, tenant: str, user: str) -> int:
    """Delete the rows that say which of `tenant`'s conversations were this end user's: the last step of
    erasing a user, once each conversation is erased (until then they find what is left to erase)."""
    with Session(engine) as session:
        removed = session.exec(
            delete(ConversationOwner).where(
                col(ConversationOwner.user) == user,
                *_in_tenant(engine, col(ConversationOwner.conversation_id), tenant),
            )
        ).rowcount
        session.commit()
        return int(removed)


def erase_conversation(engine: Engine, key: str, at: datetime, *, keep_owner: bool = False) -> dict[str, int]:
    """Delete a conversation's transcript, lineage, event log, feedback, satisfaction score and what the
    numbers per version count of it; keep a tombstone row
    (status `erased`, no content) so the id is not mistaken for a new conversation. Idempotent.
    `keep_owner` keeps whose it was, for a user's erasure that deletes those rows last (`forget_owners`)."""
    with Session(engine) as session:
        counts = {
            "messages": session.exec(delete(Message).where(col(Message.conversation_id) == key)).rowcount,
            "events": session.exec(
                delete(ConversationEvent).where(col(ConversationEvent.conversation_id) == key)
            ).rowcount,
            "feedback": session.exec(delete(Feedback).where(col(Feedback.conversation_id) == key)).rowcount,
            "tool_results": session.exec(
                delete(ToolResult).where(col(ToolResult.conversation_id) == key)
            ).rowcount,
            "satisfaction": session.exec(
                delete(Satisfaction).where(col(Satisfaction.conversation_id) == key)
            ).rowcount,
            "bot_turns": session.exec(delete(BotTurn).where(col(BotTurn.conversation_id) == key)).rowcount,
            "deliveries": session.exec(
                delete(ChannelDelivery).where(col(ChannelDelivery.conversation_id) == key)
            ).rowcount,
        }
        if not keep_owner:  # whose it was is the user's data too: erased with the rest
            counts["owner"] = session.exec(
                delete(ConversationOwner).where(col(ConversationOwner.conversation_id) == key)
            ).rowcount
        row = session.get(Conversation, key) or Conversation(id=key, created_at=at, updated_at=at)
        row.status, row.ended_reason, row.last_intent, row.turn_count = ERASED, ERASED, None, 0
        row.updated_at = at
        session.add(row)
        session.commit()
    return counts


def expired_conversations(
    engine: Engine, *, before: datetime, limit: int = 500, offset: int = 0
) -> list[str]:
    """Keys of conversations not updated since `before` and not erased yet, oldest first."""
    with Session(engine) as session:
        query = (
            select(Conversation.id)
            .where(col(Conversation.updated_at) < before, col(Conversation.status) != ERASED)
            .order_by(col(Conversation.updated_at), col(Conversation.id))
            .offset(offset)
            .limit(limit)
        )
        return list(session.exec(query).all())


def bot_message(engine: Engine, key: str, turn_id: str) -> Message | None:
    """The bot's reply of a turn, with its lineage; None when the turn has none (yet)."""
    with Session(engine) as session:
        query = select(Message).where(
            col(Message.conversation_id) == key, col(Message.turn_id) == turn_id, col(Message.role) == "bot"
        )
        return session.exec(query).first()


def record_feedback(
    engine: Engine, key: str, turn_id: str, *, rating: str, comment: str | None, author: str, at: datetime
) -> Feedback:
    """Store a rating of a turn's answer; rating the same turn again replaces it."""
    with Session(engine) as session:
        row = session.merge(
            Feedback(
                id=_feedback_id(key, turn_id),
                conversation_id=key,
                turn_id=turn_id,
                rating=rating,
                comment=comment,
                author=author[:MAX_AUTHOR],  # a token's subject is the caller's to choose
                created_at=at,
            )
        )
        session.commit()
        session.refresh(row)
        return row


def get_feedback(engine: Engine, key: str, turn_id: str) -> Feedback | None:
    with Session(engine) as session:
        return session.get(Feedback, _feedback_id(key, turn_id))


def ratings(engine: Engine, key: str, turn_ids: Sequence[str]) -> dict[str, str]:
    """The rating of each of these turns' answers that has one, by turn id."""
    if not turn_ids:
        return {}
    with Session(engine) as session:
        rows = session.exec(
            select(Feedback.turn_id, Feedback.rating).where(
                col(Feedback.conversation_id) == key, col(Feedback.turn_id).in_(list(turn_ids))
            )
        ).all()
        return dict(rows)


def last_bot_turn(engine: Engine, key: str) -> BotTurn | None:
    """The conversation's newest answered turn as the numbers count it: the bot and version it is on."""
    with Session(engine) as session:
        query = select(BotTurn).where(col(BotTurn.conversation_id) == key)
        return session.exec(query.order_by(col(BotTurn.at).desc()).limit(1)).first()


def record_satisfaction(
    engine: Engine,
    key: str,
    *,
    bot: str,
    version: str,
    score: int,
    comment: str | None,
    author: str,
    at: datetime,
) -> Satisfaction:
    """Store a user's 1 to 5 score of a conversation; scoring it again replaces the score."""
    with Session(engine) as session:
        row = session.merge(
            Satisfaction(
                conversation_id=key,
                bot=bot,
                version=version,
                score=score,
                comment=comment,
                author=author[:MAX_AUTHOR],
                created_at=at,
            )
        )
        session.commit()
        session.refresh(row)
        return row


def _feedback_id(key: str, turn_id: str) -> str:
    # A key (up to 192 characters) and a turn id (up to 200) can outgrow the id column's 300, which
    # PostgreSQL enforces: a long turn id is then represented by its digest.
    natural = f"{key}:{turn_id}"
    if len(natural) <= MAX_ID:
        return natural
    return f"{key}:sha256:{hashlib.sha256(turn_id.encode()).hexdigest()}"


def _in_tenant(engine: Engine, key: Any, tenant: str) -> tuple[ColumnElement[bool], ColumnElement[bool]]:
    # Keys are `tenant/id`: the tenant's rows are the key range ["tenant/", "tenant0"), "0" following
    # "/" byte-wise. PostgreSQL compares in the database's collation, and a linguistic one (en_US)
    # first ignores the "/": "t1/c" would sort after "t10". So there the range is taken in C order.
    if engine.dialect.name == "postgresql":
        key = key.collate("C")
    return key >= f"{tenant}/", key < f"{tenant}0"


def rated_turns(
    engine: Engine, *, tenant: str | None = None
) -> list[tuple[Feedback, Message | None, Message | None]]:
    """Every rating with the answer it rates (and the user's words before it), oldest first."""
    with Session(engine) as session:
        query = select(Feedback).order_by(col(Feedback.created_at))
        if tenant is not None:
            query = query.where(*_in_tenant(engine, col(Feedback.conversation_id), tenant))
        rows = []
        for feedback in session.exec(query).all():
            messages = session.exec(
                select(Message).where(
                    col(Message.conversation_id) == feedback.conversation_id,
                    col(Message.turn_id) == feedback.turn_id,
                )
            ).all()
            by_role = {message.role: message for message in messages}
            rows.append((feedback, by_role.get("user"), by_role.get("bot")))
        return rows
