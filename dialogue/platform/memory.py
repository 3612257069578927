"""The end users' memory in the store: items remembered of a user across conversations, and their consent.

Per tenant and user; nothing is written while the user has not consented (no consent row is no), and
withdrawing consent forgets every item. A turn's items are written in the same transaction as its
transcript entry (`store.record_turn`), after the reply is made; the API reads, corrects and deletes them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import datetime

from sqlalchemy import delete
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from dialogue.platform.db import MemoryConsent, MemoryItem

MAX_VALUE = 500
MAX_BY = 200


def tenant_of(conversation_id: str) -> str:
    """The tenant of a conversation's key (`tenant/id`)."""
    return conversation_id.split("/", 1)[0]


def item_id(tenant: str, user: str, kind: str) -> str:
    """One item per kind of a user: the same kind said again replaces the value in place."""
    return hashlib.sha256(f"{tenant}\0{user}\0{kind}".encode()).hexdigest()[:32]


def consented(session: Session, tenant: str, user: str) -> bool:
    row = session.get(MemoryConsent, (tenant, user))
    return row is not None and row.consented


def consent(engine: Engine, *, tenant: str, user: str) -> MemoryConsent | None:
    with Session(engine) as session:
        return session.get(MemoryConsent, (tenant, user))


def consent_of(engine: Engine, *, tenant: str, user: str) -> bool:
    """Whether the user consents now."""
    with Session(engine) as session:
        return consented(session, tenant, user)


def set_consent(
    engine: Engine, *, tenant: str, user: str, consented: bool, by: str, at: datetime
) -> tuple[MemoryConsent, int]:
    """Record the user's answer; withdrawing it forgets every item at once. The row and how many items
    were forgotten."""
    with Session(engine) as session:
        row = session.merge(
            MemoryConsent(tenant=tenant, user=user, consented=consented, at=at, by=by[:MAX_BY])
        )
        forgotten = 0 if consented else _delete(session, tenant, user, ())
        session.commit()
        session.refresh(row)
        return row, forgotten


def remember_in(
    session: Session,
    conversation_id: str,
    user: str,
    facts: Mapping[str, str],
    *,
    turn_id: str,
    at: datetime,
    expires_at: datetime | None,
) -> list[str]:
    """Within a turn's write: keep what the conversation's end user said of themself, if they consented.
    The ids of the items written (none without consent)."""
    tenant = tenant_of(conversation_id)
    if not consented(session, tenant, user):
        return []
    return [
        _put(session, tenant, user, kind, value, "user", conversation_id, turn_id, at, expires_at)
        for kind, value in facts.items()
    ]


def remember(
    engine: Engine,
    *,
    tenant: str,
    user: str,
    kind: str,
    value: str,
    source: str,
    at: datetime,
    conversation_id: str | None = None,
    turn_id: str | None = None,
    expires_at: datetime | None = None,
) -> MemoryItem | None:
    """Keep or correct one item; None when the user has not consented."""
    with Session(engine) as session:
        if not consented(session, tenant, user):
            return None
        key = _put(session, tenant, user, kind, value, source, conversation_id, turn_id, at, expires_at)
        session.commit()
        return session.get(MemoryItem, key)


def items(engine: Engine, *, tenant: str, user: str) -> Sequence[MemoryItem]:
    """Everything remembered of the user, oldest kind first."""
    with Session(engine) as session:
        query = (
            select(MemoryItem)
            .where(col(MemoryItem.tenant) == tenant, col(MemoryItem.user) == user)
            .order_by(col(MemoryItem.created_at), col(MemoryItem.kind))
        )
        return session.exec(query).all()


def item(engine: Engine, *, tenant: str, user: str, kind: str) -> MemoryItem | None:
    with Session(engine) as session:
        return session.get(MemoryItem, item_id(tenant, user, kind))


def forget(engine: Engine, *, tenant: str, user: str, kinds: Sequence[str] = ()) -> int:
    """Delete these kinds of the user's items (all of them when none are named); how many went."""
    with Session(engine) as session:
        removed = _delete(session, tenant, user, kinds)
        session.commit()
        return removed


def erase_user(engine: Engine, *, tenant: str, user: str) -> dict[str, int]:
    """Delete the user's items and their consent: the user's erasure."""
    with Session(engine) as session:
        counts = {
            "memory_items": _delete(session, tenant, user, ()),
            "memory_consent": int(
                session.exec(
                    delete(MemoryConsent).where(
                        col(MemoryConsent.tenant) == tenant, col(MemoryConsent.user) == user
                    )
                ).rowcount
            ),
        }
        session.commit()
        return counts


def expire(engine: Engine, *, now: datetime) -> int:
    """Delete every item whose retention ran out (the retention schedule)."""
    with Session(engine) as session:
        removed = session.exec(
            delete(MemoryItem).where(
                col(MemoryItem.expires_at).is_not(None), col(MemoryItem.expires_at) < now
            )
        ).rowcount
        session.commit()
        return int(removed)


def _put(
    session: Session,
    tenant: str,
    user: str,
    kind: str,
    value: str,
    source: str,
    conversation_id: str | None,
    turn_id: str | None,
    at: datetime,
    expires_at: datetime | None,
) -> str:
    key = item_id(tenant, user, kind)
    row = session.get(MemoryItem, key) or MemoryItem(
        id=key, tenant=tenant, user=user, kind=kind, value="", source=source, created_at=at, updated_at=at
    )
    row.value, row.source = value[:MAX_VALUE], source
    row.conversation_id, row.turn_id = conversation_id, turn_id
    row.updated_at, row.expires_at = max(row.updated_at, at), expires_at
    session.add(row)
    return key


def _delete(session: Session, tenant: str, user: str, kinds: Sequence[str]) -> int:
    where = [col(MemoryItem.tenant) == tenant, col(MemoryItem.user) == user]
    if kinds:
        where.append(col(MemoryItem.kind).in_(kinds))
    return int(session.exec(delete(MemoryItem).where(*where)).rowcount)
