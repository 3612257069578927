"""The canary guard: a canary that does worse than its stable version is rolled back without waiting for
an operator. Once a canary has answered `min_turns` turns since it was released, its degraded rate and its
rated-down rate are compared with the stable version's over the same period; either one higher than the
stable's by more than `margin` drops the canary, and says so: a warning in the log, the audit entry
(actor `guard`, the numbers in its reason) and `dialogue_canary_rollbacks_total{bot,reason}`.

Every API replica runs it (`DIALOGUE_CANARY_GUARD_SECONDS`); the numbers come from the store, so all see
the same, and the drop is conditional on the canary still being the one judged: one replica drops it, the
others find it gone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from sqlalchemy.engine import Engine

from dialogue.platform import releases
from dialogue.platform.metrics import CANARY_ROLLBACKS
from dialogue.platform.version_numbers import VersionNumbers, version_numbers

log = logging.getLogger("dialogue.platform.canary_guard")

ACTOR = "guard"

Outcome = Literal["no_canary", "too_few_turns", "kept", "rolled_back", "changed"]
"""`changed`: the canary was worse, but the release changed before the guard dropped it (another replica
dropped it, or an operator released something else): nothing was written."""
Reason = Literal["degraded", "rated_down"]


@dataclass(frozen=True)
class Verdict:
    bot: str
    outcome: Outcome
    canary: VersionNumbers | None = None
    stable: VersionNumbers | None = None
    reason: str | None = None
    """Why the canary was (or would have been) dropped, with the numbers."""


def guard(engine: Engine, bot: str, *, margin: float, min_turns: int) -> Verdict:
    """Judge the bot's canary, and drop it if it does worse than the stable version by more than `margin`."""
    row = releases.get_release(engine, bot)
    if row is None or row.canary is None:
        return Verdict(bot, "no_canary")
    canary = row.canary
    # Since the release last changed: the canary's own period, and the stable's over the same one.
    numbers = version_numbers(engine, bot, since=row.updated_at, versions=[row.stable, canary])
    on_canary = numbers.get(canary, VersionNumbers(bot, canary))
    on_stable = numbers.get(row.stable, VersionNumbers(bot, row.stable))
    if on_canary.turns < min_turns:
        return Verdict(bot, "too_few_turns", on_canary, on_stable)
    worse = _worse(on_canary, on_stable, margin)
    if worse is None:
        return Verdict(bot, "kept", on_canary, on_stable)
    kind, reason = worse
    if releases.drop_canary(engine, bot, canary, actor=ACTOR, reason=reason) is None:
        return Verdict(bot, "changed", on_canary, on_stable, reason)
    CANARY_ROLLBACKS.labels(bot, kind).inc()
    log.warning("canary %s@%s rolled back: %s", bot, canary, reason, extra={"bot": bot, "canary": canary})
    return Verdict(bot, "rolled_back", on_canary, on_stable, reason)


def guard_all(engine: Engine, *, margin: float, min_turns: int) -> list[Verdict]:
    """`guard` for every bot with a canary."""
    return [
        guard(engine, row.bot, margin=margin, min_turns=min_turns)
        for row in releases.list_releases(engine)
        if row.canary is not None
    ]


def _worse(canary: VersionNumbers, stable: VersionNumbers, margin: float) -> tuple[Reason, str] | None:
    rates: tuple[tuple[Reason, float, float], ...] = (
        ("degraded", canary.degraded_rate, stable.degraded_rate),
        ("rated_down", canary.rated_down_rate, stable.rated_down_rate),
    )
    for kind, on_canary, on_stable in rates:
        if on_canary - on_stable > margin:
            name = kind.replace("_", "-")
            return kind, (
                f"{name} rate {on_canary:.1%} over {canary.turns} turns of the canary {canary.version}, "
                f"{on_stable:.1%} over {stable.turns} turns of the stable {stable.version}: "
                f"more than {margin:.1%} above"
            )
    return None
