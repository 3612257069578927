"""The numbers of each version of a bot, read from the store (so every API replica gives the same ones): its
turns, the share of them degraded, fallbacks, out of scope and handed off, the share rated down, its users'
satisfaction, and its latency. What the console shows stable beside canary, and what the canary guard
(`canary_guard`) judges a canary by.

A turn counts here once it is recorded (`record_turn` writes its `bot_turn` row beside the transcript).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Integer, and_, case, cast, func
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from dialogue.model.contracts import OUT_OF_SCOPE, Lineage, NluResult
from dialogue.platform.db import BotTurn, Feedback, Satisfaction

LATENCY_SAMPLE = 10_000
"""Percentiles are taken over a version's most recent turns, at most this many."""


def bot_turn(
    conversation_id: str, turn_id: str, at: datetime, *, degraded: bool, nlu: NluResult, lineage: Lineage
) -> BotTurn | None:
    """What the numbers keep of an answered turn; None when its lineage names no bot (a turn of a worker
    from before bots were versioned)."""
    if lineage.bot is None or lineage.bot_version is None:
        return None
    routed_out = nlu.routing is not None and nlu.routing.best == "out_of_scope"
    return BotTurn(
        conversation_id=conversation_id,
        turn_id=turn_id,
        bot=lineage.bot,
        version=lineage.bot_version,
        at=at,
        degraded=degraded,
        fallback=lineage.action == "fallback",
        out_of_scope=nlu.intent.name == OUT_OF_SCOPE or routed_out,
        handoff=lineage.action == "handoff",
        latency_ms=lineage.timings_ms.get("total"),
    )


@dataclass(frozen=True)
class VersionNumbers:
    """One version's numbers over a period. Rates are shares of its turns (0 with none)."""

    bot: str
    version: str
    turns: int = 0
    degraded: int = 0
    fallback: int = 0
    out_of_scope: int = 0
    handoff: int = 0
    ratings: int = 0
    rated_down: int = 0
    satisfaction_count: int = 0
    satisfaction_mean: float | None = None
    """The mean 1 to 5 score of its conversations scored in the period; None with none."""
    p50_ms: float | None = None
    p99_ms: float | None = None

    def rate(self, count: int) -> float:
        return count / self.turns if self.turns else 0.0

    @property
    def degraded_rate(self) -> float:
        return self.rate(self.degraded)

    @property
    def rated_down_rate(self) -> float:
        """Turns rated down, as a share of all its turns (not of the rated ones: few turns are rated)."""
        return self.rate(self.rated_down)

    def public(self) -> dict[str, Any]:
        """The numbers with their rates, as the API and the log give them."""
        return {
            "bot": self.bot,
            "version": self.version,
            "turns": self.turns,
            "degraded": self.degraded,
            "degraded_rate": round(self.degraded_rate, 4),
            "fallback_rate": round(self.rate(self.fallback), 4),
            "out_of_scope_rate": round(self.rate(self.out_of_scope), 4),
            "handoff_rate": round(self.rate(self.handoff), 4),
            "ratings": self.ratings,
            "rated_down": self.rated_down,
            "rated_down_rate": round(self.rated_down_rate, 4),
            "satisfaction_count": self.satisfaction_count,
            "satisfaction_mean": None if self.satisfaction_mean is None else round(self.satisfaction_mean, 3),
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
        }


def version_numbers(
    engine: Engine, bot: str, *, since: datetime | None = None, versions: list[str] | None = None
) -> dict[str, VersionNumbers]:
    """The numbers of each version of `bot` with a turn (or a score) since `since` (ever, when None), by
    version; only `versions` when given."""
    turns = col(BotTurn.conversation_id), col(BotTurn.turn_id)
    rated = and_(col(Feedback.conversation_id) == turns[0], col(Feedback.turn_id) == turns[1])
    where = [col(BotTurn.bot) == bot]
    if since is not None:
        where.append(col(BotTurn.at) >= since)
    if versions is not None:
        where.append(col(BotTurn.version).in_(versions))

    def count(flag: Any) -> Any:
        return func.coalesce(func.sum(cast(flag, Integer)), 0)

    columns: list[Any] = [
        col(BotTurn.version),
        func.count(),
        count(col(BotTurn.degraded)),
        count(col(BotTurn.fallback)),
        count(col(BotTurn.out_of_scope)),
        count(col(BotTurn.handoff)),
        func.count(col(Feedback.id)),
        func.coalesce(func.sum(case((col(Feedback.rating) == "down", 1), else_=0)), 0),
    ]
    query = (
        select(*columns)
        .select_from(BotTurn)
        .outerjoin(Feedback, rated)
        .where(*where)
        .group_by(col(BotTurn.version))
    )
    scores = select(col(Satisfaction.version), func.count(), func.avg(col(Satisfaction.score))).where(
        col(Satisfaction.bot) == bot
    )
    if since is not None:
        scores = scores.where(col(Satisfaction.created_at) >= since)
    if versions is not None:
        scores = scores.where(col(Satisfaction.version).in_(versions))
    with Session(engine) as session:
        counted = {row[0]: row[1:] for row in session.exec(query).all()}
        scored = {
            row[0]: (int(row[1]), float(row[2]))
            for row in session.exec(scores.group_by(col(Satisfaction.version))).all()
        }
        found: dict[str, VersionNumbers] = {}
        for version in sorted(set(counted) | set(scored)):
            n, degraded, fallback, oos, handoff, ratings, down = counted.get(version, (0,) * 7)
            p50, p99 = _percentiles(session, bot, version, since)
            score_count, score_mean = scored.get(version, (0, None))
            found[version] = VersionNumbers(
                bot=bot,
                version=version,
                turns=int(n),
                degraded=int(degraded),
                fallback=int(fallback),
                out_of_scope=int(oos),
                handoff=int(handoff),
                ratings=int(ratings),
                rated_down=int(down),
                satisfaction_count=score_count,
                satisfaction_mean=score_mean,
                p50_ms=p50,
                p99_ms=p99,
            )
        return found


def _percentiles(
    session: Session, bot: str, version: str, since: datetime | None
) -> tuple[float | None, float | None]:
    # In Python, from the newest turns: the same on SQLite and PostgreSQL (SQLite has no percentile).
    query = select(col(BotTurn.latency_ms)).where(
        col(BotTurn.bot) == bot, col(BotTurn.version) == version, col(BotTurn.latency_ms).is_not(None)
    )
    if since is not None:
        query = query.where(col(BotTurn.at) >= since)
    latencies = sorted(
        float(ms)
        for ms in session.exec(query.order_by(col(BotTurn.at).desc()).limit(LATENCY_SAMPLE)).all()
        if ms is not None
    )
    return percentile(latencies, 0.5), percentile(latencies, 0.99)


def percentile(ordered: list[float], share: float) -> float | None:
    """The nearest-rank percentile of sorted values; None for none."""
    if not ordered:
        return None
    rank = math.ceil(share * len(ordered) - 1e-9)  # less the float noise of 0.99 * 100
    return round(ordered[min(max(rank, 1), len(ordered)) - 1], 2)
