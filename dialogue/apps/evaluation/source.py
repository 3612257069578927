"""The recorded side: conversations as the store keeps them (redacted as stored), chosen by filter, or a
file exported from them (`dialogue eval export`), one conversation per line."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from dialogue.platform.db import Conversation, Feedback, Message


class RecordedTurn(BaseModel):
    turn_id: str
    turn_index: int
    user_text: str
    reply: str
    intent: str | None = None
    degraded: bool = False
    sources: list[str] = []
    """The cited documents' ids."""
    lineage: dict[str, Any] = {}
    rating: str | None = None
    at: datetime | None = None


class RecordedConversation(BaseModel):
    key: str
    """`tenant/id`."""
    turns: list[RecordedTurn]


class Filters(BaseModel):
    tenant: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    intent: str | None = None
    """Conversations with a turn of this intent."""
    rated_down: bool = False
    """Conversations with an answer rated down."""
    degraded: bool = False
    """Conversations with a degraded answer."""
    limit: int = 200


def recorded_conversations(engine: Engine, filters: Filters) -> list[RecordedConversation]:
    """The conversations that match, most recently updated first, with their user turns and answers."""
    with Session(engine) as session:
        query = select(Conversation.id).where(col(Conversation.status) != "erased")
        if filters.tenant is not None:
            query = query.where(col(Conversation.id).startswith(f"{filters.tenant}/"))
        if filters.since is not None:
            query = query.where(col(Conversation.updated_at) >= filters.since)
        if filters.until is not None:
            query = query.where(col(Conversation.created_at) <= filters.until)
        keys = list(session.exec(query.order_by(col(Conversation.updated_at).desc())).all())
        found: list[RecordedConversation] = []
        for key in keys:
            messages = session.exec(
                select(Message).where(col(Message.conversation_id) == key).order_by(col(Message.turn_index))
            ).all()
            ratings = dict(
                session.exec(
                    select(Feedback.turn_id, Feedback.rating).where(col(Feedback.conversation_id) == key)
                ).all()
            )
            conversation = RecordedConversation(key=key, turns=_turns(list(messages), ratings))
            if conversation.turns and _matches(conversation, filters):
                found.append(conversation)
            if len(found) >= filters.limit:
                break
        return found


def _turns(messages: list[Message], ratings: dict[str, str]) -> list[RecordedTurn]:
    """A user's message and the bot's answer at the same place; a turn a person answered is left out."""
    users = {m.turn_index: m for m in messages if m.role == "user"}
    turns = []
    for bot in (m for m in messages if m.role == "bot"):
        user = users.get(bot.turn_index)
        if user is None or not bot.text:  # an agent going on after approvals; a turn no one answered
            continue
        turns.append(
            RecordedTurn(
                turn_id=bot.turn_id,
                turn_index=bot.turn_index,
                user_text=user.text,
                reply=bot.text,
                intent=bot.intent,
                degraded=bot.degraded,
                sources=[s["document_id"] for s in bot.sources],
                lineage=bot.lineage or {},
                rating=ratings.get(bot.turn_id),
                at=bot.created_at,
            )
        )
    return turns


def _matches(conversation: RecordedConversation, filters: Filters) -> bool:
    turns = conversation.turns
    return (
        (filters.intent is None or any(t.intent == filters.intent for t in turns))
        and (not filters.rated_down or any(t.rating == "down" for t in turns))
        and (not filters.degraded or any(t.degraded for t in turns))
    )


def export(conversations: list[RecordedConversation], path: Path) -> None:
    path.write_bytes(b"".join(c.model_dump_json().encode() + b"\n" for c in conversations))


def read_export(path: Path) -> list[RecordedConversation]:
    return [
        RecordedConversation.model_validate(orjson.loads(line))
        for line in path.read_bytes().splitlines()
        if line.strip()
    ]
