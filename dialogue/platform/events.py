"""The conversation event log: the worker's activities append, the API's streams read.

Events are numbered per conversation (1, 2, 3, …) in the order they are committed: a
writer takes the next number under the primary key, and a writer that loses the race
takes the following one (on PostgreSQL, writers to one conversation take turns under an
advisory lock, so none loses). A stream client that reconnects with the last number it saw
(`Last-Event-ID`) therefore misses nothing and receives nothing twice.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import func, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlmodel import Session, col, select

from dialogue.platform.db import ConversationEvent

EventKind = Literal[
    "nlu",
    "sources",
    "token",
    "restart",
    "agent_message",
    "handoff",
    "handback",
    "tool_call",
    "tool_result",
    "approval_required",
    "bot_message",
]
APPEND_ATTEMPTS = 20
EVENT_LOCK_SPACE = 0x64656C67
"""The first key of the per-conversation advisory locks (PostgreSQL); the second is the id's hash."""


class EventLogBusy(RuntimeError):
    """Other writers kept taking the numbers this one tried: APPEND_ATTEMPTS times in a row."""


@dataclass
class NewEvent:
    kind: EventKind
    data: dict[str, Any]
    turn_id: str | None = None
    at: float = field(default_factory=time.time)


def append(engine: Engine, conversation_id: str, events: Sequence[NewEvent]) -> list[int]:
    """Append events in one transaction; their numbers follow the last committed one."""
    if not events:
        return []
    for attempt in range(APPEND_ATTEMPTS):
        try:
            with Session(engine) as session:
                if engine.dialect.name == "postgresql":
                    # Writers to one conversation queue here (until commit) instead of all taking the
                    # same next number and retrying: with eight writers, most attempts would collide.
                    session.execute(
                        text("SELECT pg_advisory_xact_lock(:space, hashtext(:id))"),
                        {"space": EVENT_LOCK_SPACE, "id": conversation_id},
                    )
                first = _newest(session, conversation_id) + 1
                session.add_all(
                    ConversationEvent(
                        conversation_id=conversation_id,
                        seq=first + i,
                        turn_id=event.turn_id,
                        kind=event.kind,
                        data=event.data,
                        at=event.at,
                    )
                    for i, event in enumerate(events)
                )
                session.commit()
                return list(range(first, first + len(events)))
        except IntegrityError:
            pass  # another writer took these numbers: take the next ones
        except OperationalError as err:
            if "locked" not in str(err.orig):
                raise  # the store is unreachable or unwritable: retrying here would only make the caller wait
            # SQLite's snapshot moved under us ("database is locked"): read the newest number again.
        time.sleep(0.002 * (attempt + 1))
    raise EventLogBusy(f"could not append to the event log of {conversation_id!r}")


def read(
    engine: Engine, conversation_id: str, *, after: int = 0, turn_id: str | None = None, limit: int = 500
) -> Sequence[ConversationEvent]:
    """Events numbered above `after`, oldest first; only one turn's when `turn_id` is given."""
    with Session(engine) as session:
        query = select(ConversationEvent).where(
            col(ConversationEvent.conversation_id) == conversation_id, col(ConversationEvent.seq) > after
        )
        if turn_id is not None:
            query = query.where(col(ConversationEvent.turn_id) == turn_id)
        return session.exec(query.order_by(col(ConversationEvent.seq)).limit(limit)).all()


def last(engine: Engine, conversation_id: str) -> int:
    """The number of the conversation's newest event (0 when it has none): where "from now" starts."""
    with Session(engine) as session:
        return _newest(session, conversation_id)


def _newest(session: Session, conversation_id: str) -> int:
    newest = session.exec(
        select(func.max(ConversationEvent.seq)).where(
            col(ConversationEvent.conversation_id) == conversation_id
        )
    ).one()
    return newest or 0


def has(engine: Engine, conversation_id: str, turn_id: str | None, kind: EventKind) -> bool:
    with Session(engine) as session:
        found = session.exec(
            select(ConversationEvent.seq).where(
                col(ConversationEvent.conversation_id) == conversation_id,
                col(ConversationEvent.turn_id) == turn_id,
                col(ConversationEvent.kind) == kind,
            )
        ).first()
        return found is not None
