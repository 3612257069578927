"""`dialogue nlu review`: the user turns worth a person's look, from the store, as an annotation file.

A turn is worth a look when the NLU was unsure of it, placed it out of scope, when its answer was rated
down, or when it led to a handoff. Each line is redacted with the bot's privacy policy, whatever the policy
let the store keep; a text said more than once (after redaction, ignoring case and spacing) is one line
that names every turn it stands for. Labelled, the file is training data (`nlu.reviewed` in the bot).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from dialogue.apps.evaluation.source import (
    Filters,
    RecordedConversation,
    RecordedTurn,
    recorded_conversations,
)
from dialogue.brain.nlu.annotations import REASONS, Annotation, Occurrence, Reason, write_annotations
from dialogue.brain.nlu.data import OUT_OF_SCOPE
from dialogue.platform.bot import BotDefinition
from dialogue.platform.db import Message
from dialogue.security.privacy.privacy_policy import PrivacyPolicy

UNSURE_BELOW = 0.5
"""Without `--unsure-below` and a bot `clarify_below`: the classifier gave the intent it chose less than even
odds against all the others together."""
HANDOFF_TURN = "handoff-"
"""How a handoff's system message's turn id starts (`workflows/conversation/handoff.py`)."""


def unsure_threshold(bot: BotDefinition, unsure_below: float | None = None) -> float:
    """The confidence below which a turn counts as unsure: the one asked for; else the bot's own
    `clarify_below` (below it the bot asked the user which intent was meant, so it was unsure by its own
    measure); else `UNSURE_BELOW`."""
    if unsure_below is not None:
        return unsure_below
    return bot.clarify_below if bot.clarify_below > 0 else UNSURE_BELOW


def review(
    engine: Engine,
    bot: BotDefinition,
    *,
    tenant: str | None = None,
    since: datetime | None = None,
    limit: int = 1000,
    unsure_below: float | None = None,
) -> list[Annotation]:
    """The turns worth reviewing, most recently updated conversations first, at most `limit` lines."""
    threshold = unsure_threshold(bot, unsure_below)
    policy = PrivacyPolicy(bot.privacy)
    conversations = recorded_conversations(engine, Filters(tenant=tenant, since=since, limit=1_000_000))
    handoffs = _handoffs(engine, {c.key for c in conversations})
    lines: dict[str, Annotation] = {}
    for conversation in conversations:
        handed_off = _turns_before_handoffs(bot, conversation, handoffs.get(conversation.key, []))
        for turn in conversation.turns:
            if since is not None and turn.at is not None and turn.at < since:
                continue
            reasons = _reasons(turn, threshold, handed_off)
            if not reasons:
                continue
            text = policy.for_export(turn.user_text)
            same = lines.get(_normalized(text))
            if same is not None:
                same.reasons = [r for r in REASONS if r in {*same.reasons, *reasons}]
                same.also.append(Occurrence(conversation_id=conversation.key, turn_id=turn.turn_id))
                continue
            if len(lines) >= limit:
                continue
            nlu = turn.lineage.get("nlu") or {}
            lines[_normalized(text)] = Annotation(
                conversation_id=conversation.key,
                turn_id=turn.turn_id,
                turn_index=turn.turn_index,
                at=turn.at,
                text=text,
                intent=turn.intent,
                confidence=(nlu.get("intent") or {}).get("confidence"),
                reasons=reasons,
                reply=policy.for_export(turn.reply),
                rating=turn.rating,
                nlu_model=turn.lineage.get("nlu_model"),
            )
    return list(lines.values())


def export_review(
    engine: Engine,
    bot: BotDefinition,
    out: Path,
    *,
    tenant: str | None = None,
    since: datetime | None = None,
    limit: int = 1000,
    unsure_below: float | None = None,
) -> list[Annotation]:
    """`review`, written to `out` as an annotation file (every `label` empty)."""
    annotations = review(engine, bot, tenant=tenant, since=since, limit=limit, unsure_below=unsure_below)
    write_annotations(annotations, out)
    return annotations


def _reasons(turn: RecordedTurn, threshold: float, handed_off: set[int]) -> list[Reason]:
    lineage: dict[str, Any] = turn.lineage
    nlu = lineage.get("nlu") or {}
    confidence = (nlu.get("intent") or {}).get("confidence")
    routing = nlu.get("routing") or {}
    # The router's verdict counts as much as the classifier's: the policy declines on either.
    declined_by_router = bool(routing) and routing.get("out_of_scope", 0) > max(
        routing.get("knowledge", 0), routing.get("intent", 0)
    )
    out_of_scope = turn.intent == OUT_OF_SCOPE or declined_by_router or lineage.get("action") == "fallback"
    unsure = not out_of_scope and (
        lineage.get("action") == "clarify" or (confidence is not None and confidence < threshold)
    )
    found = {
        "unsure": unsure,
        "out_of_scope": out_of_scope,
        "rated_down": turn.rating == "down",
        "handed_off": turn.turn_index in handed_off,
    }
    return [reason for reason in REASONS if found[reason]]


def _handoffs(engine: Engine, keys: set[str]) -> dict[str, list[int]]:
    """Where each conversation was handed to a person: the places of its handoff messages."""
    found: dict[str, list[int]] = {}
    with Session(engine) as session:
        rows = session.exec(
            select(Message.conversation_id, Message.turn_index).where(
                col(Message.role) == "system", col(Message.turn_id).startswith(HANDOFF_TURN)
            )
        ).all()
    for key, index in rows:
        if key in keys:
            found.setdefault(key, []).append(index)
    return found


def _turns_before_handoffs(
    bot: BotDefinition, conversation: RecordedConversation, handoffs: list[int]
) -> set[int]:
    """The turns that led to each handoff: the last answered turn before it, and when that turn only asked
    for a person (its intent's action is `handoff`), the one before too: the question the bot failed."""
    marked: set[int] = set()
    for place in handoffs:
        before = [t for t in conversation.turns if t.turn_index < place]
        if not before:
            continue
        marked.add(before[-1].turn_index)
        intent = bot.intent(before[-1].intent or "")
        if intent is not None and intent.action == "handoff" and len(before) > 1:
            marked.add(before[-2].turn_index)
    return marked


def _normalized(text: str) -> str:
    return " ".join(text.casefold().split())
