"""Recorded vs candidate, turn by turn: what changed (intent, action, sources, tool calls, degraded, the
text), how similar the answers are, how long they took; the summary and the release gate."""

from __future__ import annotations

import difflib
import re
import statistics
from typing import Any

from pydantic import BaseModel

from dialogue.apps.evaluation.candidate import Answer, CandidateTurn, tool_calls
from dialogue.apps.evaluation.source import RecordedTurn

CHANGES = ("intent", "action", "sources", "tool_calls", "degraded", "text")


class TurnComparison(BaseModel):
    conversation: str
    turn_index: int
    turn_id: str
    user_text: str
    rating: str | None
    recorded: Answer
    candidate: Answer
    changes: list[str]
    similarity: float
    """Of the two answers' texts, 0 to 1 (difflib's ratio over words)."""
    source_overlap: float
    """Shared cited documents over all cited ones (1 when neither cites any)."""
    judge: dict[str, Any] | None = None


def compare(conversation: str, recorded: RecordedTurn, candidate: CandidateTurn) -> TurnComparison:
    lineage = recorded.lineage
    before = Answer(
        reply=recorded.reply,
        intent=recorded.intent,
        action=lineage.get("action"),
        degraded=recorded.degraded,
        sources=recorded.sources,
        tool_calls=tool_calls(lineage),
        total_ms=(lineage.get("timings_ms") or {}).get("total"),
    )
    after = Answer.model_validate(candidate.model_dump(include=set(Answer.model_fields)))
    changes = []
    for name in ("intent", "degraded", "sources", "tool_calls"):
        if getattr(before, name) != getattr(after, name):
            changes.append(name)
    if before.action is not None and before.action != after.action:  # older answers did not keep it
        changes.append("action")
    similarity = difflib.SequenceMatcher(None, _words(before.reply), _words(after.reply)).ratio()
    if before.reply != after.reply:
        changes.append("text")
    cited = set(before.sources) | set(after.sources)
    return TurnComparison(
        conversation=conversation,
        turn_index=recorded.turn_index,
        turn_id=recorded.turn_id,
        user_text=recorded.user_text,
        rating=recorded.rating,
        recorded=before,
        candidate=after,
        changes=sorted(changes, key=CHANGES.index),
        similarity=round(similarity, 4),
        source_overlap=round(len(set(before.sources) & set(after.sources)) / len(cited), 4) if cited else 1.0,
    )


def _words(text: str) -> list[str]:
    return text.split()


def summary(turns: list[TurnComparison]) -> dict[str, Any]:
    def latency(side: str) -> dict[str, float | None]:
        values = [v for t in turns if (v := getattr(t, side).total_ms) is not None]
        if not values:
            return {"p50": None, "p90": None}
        ordered = sorted(values)
        return {
            "p50": round(statistics.median(ordered), 1),
            "p90": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], 1),
        }

    counts = {f"changed_{name}" if name != "text" else "changed_texts": 0 for name in CHANGES}
    for turn in turns:
        for name in turn.changes:
            counts[f"changed_{name}" if name != "text" else "changed_texts"] += 1
    return {
        "conversations": len({t.conversation for t in turns}),
        "turns": len(turns),
        "changed_turns": sum(1 for t in turns if t.changes),
        "changed_intents": counts.pop("changed_intent"),
        "changed_actions": counts.pop("changed_action"),
        **counts,
        "rated_down": sum(1 for t in turns if t.rating == "down"),
        "degraded_recorded": sum(1 for t in turns if t.recorded.degraded),
        "degraded_candidate": sum(1 for t in turns if t.candidate.degraded),
        "mean_similarity": round(statistics.fmean(t.similarity for t in turns), 4) if turns else None,
        "mean_source_overlap": round(statistics.fmean(t.source_overlap for t in turns), 4) if turns else None,
        "latency_ms": {"recorded": latency("recorded"), "candidate": latency("candidate")},
    }


GATE = re.compile(r"^\s*([a-z_]+)\s*(>=|<=|>|<|==)\s*([0-9.]+)\s*(%?)\s*$")


def gate(result: dict[str, Any], conditions: list[str]) -> list[str]:
    """The conditions that hold (each fails the gate): `changed_intents>5%` (of the turns), `changed_turns>3`.
    Raises ValueError for a condition that does not parse or names no number of the summary."""
    met = []
    turns = result["turns"] or 1
    for condition in conditions:
        parsed = GATE.match(condition)
        if parsed is None:
            raise ValueError(f"{condition!r}: write it as NAME>NUMBER or NAME>NUMBER% (>, >=, <, <=, ==)")
        name, operator, number, percent = parsed.groups()
        value = result.get(name)
        if not isinstance(value, int | float) or isinstance(value, bool):
            numbers = ", ".join(k for k, v in result.items() if isinstance(v, int | float))
            raise ValueError(f"{condition!r}: the summary has no number {name!r} (it has {numbers})")
        measured = value / turns * 100 if percent else value
        limit = float(number)
        holds = {
            ">": measured > limit,
            ">=": measured >= limit,
            "<": measured < limit,
            "<=": measured <= limit,
            "==": measured == limit,
        }[operator]
        if holds:
            met.append(f"{condition} (measured {measured:.1f}{'%' if percent else ''})")
    return met


def sides(recorded: list[RecordedTurn], candidate: list[CandidateTurn]) -> dict[str, Any]:
    """What each side was made of, from lineage: NLU models, generators, prompts, document versions."""

    def of(lineages: list[dict[str, Any]]) -> dict[str, Any]:
        def each(name: str) -> list[str]:
            return sorted({str(lineage[name]) for lineage in lineages if lineage.get(name)})

        return {
            "nlu_models": each("nlu_model"),
            "generators": each("generator"),
            "prompts": sorted(
                {f"{x.get('prompt_id')}#{x.get('prompt_hash')}" for x in lineages if x.get("prompt_id")}
            ),
            "documents": sorted(
                {
                    f"{d['document_id']}@v{d.get('version')}"
                    for x in lineages
                    for d in x.get("documents") or []
                }
            ),
        }

    return {"recorded": of([t.lineage for t in recorded]), "candidate": of([t.lineage for t in candidate])}
