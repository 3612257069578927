"""The conversation before a turn, from the transcript in the store, and what is remembered of its end user
across conversations: what an LLM step sees of it."""

from __future__ import annotations

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from temporalio import activity

from dialogue.brain.llm.context import ROLES, Conversation, Said
from dialogue.brain.memory import memory_use
from dialogue.model.contracts import ContextRequest
from dialogue.platform import memory, store

MAX_CONTEXT_ROWS = 200
"""Transcript rows one LLM call reads at most, newest first: the budget fills long before (a turn is
two rows), and a conversation of any length costs the same."""


def read_conversation(engine: Engine, context: ContextRequest) -> Conversation:
    """The transcript before the current turn, from the store: not carried through the workflow's
    history (an LLM call's input would be most of it), recorded in lineage by place instead."""
    since = context.summary.through if context.summary is not None else 0
    expected = range(since, context.turn_index)
    try:
        rows = store.recent_messages(
            engine, context.conversation_id, start=since, end=context.turn_index, limit=MAX_CONTEXT_ROWS
        )
        tenant, user = memory.tenant_of(context.conversation_id), context.user
        items = memory.items(engine, tenant=tenant, user=user) if user is not None else []
        consented = user is not None and (
            bool(items) or memory.consent_of(engine, tenant=tenant, user=user)
        )  # items exist only while the user consents: no second read then
    except SQLAlchemyError as err:
        activity.logger.warning("transcript unavailable for the LLM's context: %s", err.__class__.__name__)
        return Conversation(
            summary=context.summary, expected=expected, notes=(*context.notes, "the store was unavailable")
        )
    earlier = [Said(index, role, text) for index, role, text in rows if role in ROLES]  # type: ignore[arg-type]
    unread = min(index for index, _, _ in rows) if len(rows) >= MAX_CONTEXT_ROWS else None
    return Conversation(
        earlier=earlier,
        summary=context.summary,
        expected=range(unread, context.turn_index) if unread is not None else expected,
        unread_before=unread,
        notes=tuple(context.notes),
        remembered=tuple(f"{item.kind}: {item.value}" for item in items),
        memory=tuple(memory_use(item) for item in items),
        consented=consented,
    )
