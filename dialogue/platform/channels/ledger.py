"""The store's side of the channels: the deliveries' ledger (what each platform took, the dead letters) and
the conversation each thread is holding now."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from dialogue.model.contracts import Delivery
from dialogue.platform.db import ChannelDelivery, ChannelThread


def begin(engine: Engine, delivery: Delivery, tenant: str) -> ChannelDelivery:
    """The delivery's row as an attempt begins: `sent` already (nothing to do), or now `sending`, its
    attempt counted. An operator's resend (`Delivery.resend`) starts it again from `sending`."""
    now = datetime.now(UTC)
    with Session(engine) as session:
        row = session.get(ChannelDelivery, delivery.id)
        if row is None:
            row = ChannelDelivery(
                id=delivery.id,
                tenant=tenant,
                conversation_id=delivery.conversation_id,
                channel=delivery.address.channel,
                status="sending",
                delivery=delivery.model_dump_json(),
                created_at=now,
                updated_at=now,
            )
        elif row.status == "sent" and not delivery.resend:
            return row
        row.status = "sending"
        row.attempts += 1
        row.updated_at = now
        session.add(row)
        try:
            session.commit()
        except IntegrityError:  # another attempt wrote it first (a worker thought dead, still running)
            session.rollback()
            return begin(engine, delivery, tenant)
        session.refresh(row)
        return row


def finish(
    engine: Engine, delivery_id: str, status: str, *, platform_id: str | None = None, error: str | None = None
) -> None:
    """The attempt's outcome: `sent` (with the platform's id), `dead`, or still `sending` with its error."""
    with Session(engine) as session:
        row = session.get(ChannelDelivery, delivery_id)
        if row is None:
            return
        row.status = status
        row.platform_id = platform_id or row.platform_id
        row.last_error = error[:500] if error else None
        row.updated_at = datetime.now(UTC)
        session.add(row)
        session.commit()


def listed(
    engine: Engine, tenant: str | None, status: str | None, *, limit: int, offset: int
) -> Sequence[ChannelDelivery]:
    """Deliveries of `tenant` (None: every tenant's), newest first, of `status` if given."""
    query = select(ChannelDelivery)
    if tenant is not None:
        query = query.where(ChannelDelivery.tenant == tenant)
    if status is not None:
        query = query.where(ChannelDelivery.status == status)
    query = query.order_by(col(ChannelDelivery.updated_at).desc()).limit(limit).offset(offset)
    with Session(engine) as session:
        return session.exec(query).all()


def get(engine: Engine, delivery_id: str) -> ChannelDelivery | None:
    with Session(engine) as session:
        return session.get(ChannelDelivery, delivery_id)


def current_conversation(engine: Engine, thread: str) -> str | None:
    """The conversation (its client id) the thread is holding now; None: it has had none."""
    with Session(engine) as session:
        row = session.get(ChannelThread, thread)
        return row.conversation_id if row else None


def next_conversation(engine: Engine, thread: str, after: str | None, message_id: str) -> str:
    """The conversation the thread holds from this message on, its last one (`after`) having ended: the
    thread's own name for its first, then one named after the message that starts it. Two messages that
    race here both get the one the first of them wrote."""
    conversation_id = thread if after is None else _named(thread, message_id)
    now = datetime.now(UTC)
    with Session(engine) as session:
        row = session.get(ChannelThread, thread)
        if row is not None and row.conversation_id != after:
            return row.conversation_id  # another message moved it on already
        if row is None:
            row = ChannelThread(thread=thread, conversation_id=conversation_id, updated_at=now)
        row.conversation_id, row.updated_at = conversation_id, now
        session.add(row)
        try:
            session.commit()
        except IntegrityError:
            session.rollback()
            return current_conversation(engine, thread) or conversation_id
        return conversation_id


def _named(thread: str, message_id: str) -> str:
    suffix = hashlib.sha256(message_id.encode()).hexdigest()[:12]
    return f"{thread[:115]}-{suffix}"
