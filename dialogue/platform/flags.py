"""Feature flags: streaming, the LLM generator, redaction, handoff and the bot's LLM variant (its
`llm.variant` settings: another prompt, model or budget), each on, off, or rolled out to a share of
conversations.

A flag's setting is `true`, `false`, or the percentage (0 to 100) of conversations it is on for. The
deployment sets them (`DIALOGUE_FLAGS`, JSON), and a bot's `flags:` overrides the deployment's for
that bot. A conversation's value is a pure function of the flag and the conversation's key: every
process, on every turn, puts a conversation on the same side of a rollout, and raising a percentage
only adds conversations (none changes side). The API evaluates the flags once per turn and sends
the values with the turn; the workflow acts on them and records them in the answer's lineage.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Literal, get_args

from pydantic import Field

if TYPE_CHECKING:
    from dialogue.platform.bot import BotDefinition
    from dialogue.platform.settings import Settings

Flag = Literal["streaming", "llm_generator", "redaction", "handoff", "llm_variant", "agent"]
FLAGS: tuple[Flag, ...] = get_args(Flag)

Rollout = bool | Annotated[float, Field(ge=0, le=100)]
"""On (`true`), off (`false`), or on for this percentage of conversations."""
FlagSettings = dict[Flag, Rollout]
"""Flag name to its rollout; an unknown name fails validation, so a typo stops the process at start-up."""

BUCKETS = 10_000
"""A percentage to two decimals."""


def bucket(flag: str, key: str) -> int:
    """The conversation's place in `[0, BUCKETS)` for this flag.

    SHA-256 rather than `hash()`, which Python salts per process: every API replica must agree.
    The flag's name is hashed in, so the conversations of one rollout are not those of another.
    """
    digest = hashlib.sha256(f"{flag}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def _percent(rollout: Rollout) -> float:
    if isinstance(rollout, bool):
        return 100.0 if rollout else 0.0
    return float(rollout)


@dataclass(frozen=True)
class TurnFlags:
    """A turn's flags as the workflow acts on them, each with its default: what a turn that does not carry
    the flag gets (turns sent before flags existed carry none, and keep the behaviour they had then). The
    deployment's defaults (`FeatureFlags.resolve`) are these, but for `llm_generator`."""

    streaming: bool = True
    llm_generator: bool | None = None
    """None: each worker's own `DIALOGUE_GENERATOR` decides."""
    redaction: bool = True
    handoff: bool = True
    llm_variant: bool = False
    agent: bool = False

    @classmethod
    def of(cls, carried: Mapping[str, bool]) -> TurnFlags:
        """The flags a turn carries (`TurnRequest.flags`); unknown names are ignored."""
        return cls(**{flag: carried[flag] for flag in FLAGS if flag in carried})


@dataclass(frozen=True)
class FeatureFlags:
    """Every flag's rollout, in percent, once the defaults, the deployment's and the bot's are merged."""

    percent: Mapping[Flag, float]
    unset_generator: bool = False
    """`llm_generator` set nowhere: each worker's own `DIALOGUE_GENERATOR` decides, as before flags."""

    @classmethod
    def resolve(
        cls,
        deployment: Mapping[Flag, Rollout],
        bot: Mapping[Flag, Rollout] | None = None,
        *,
        generator: str = "grounded",
    ) -> FeatureFlags:
        """The bot's setting of a flag, else the deployment's, else the default: everything on, and the
        LLM generator on exactly when it is the configured generator (as before flags existed)."""
        turn = TurnFlags()
        defaults: dict[Flag, Rollout] = {flag: bool(getattr(turn, flag)) for flag in FLAGS}
        defaults["llm_generator"] = generator == "openai"
        merged = defaults | dict(deployment) | dict(bot or {})
        unset = "llm_generator" not in deployment and "llm_generator" not in (bot or {})
        return cls({flag: _percent(merged[flag]) for flag in FLAGS}, unset_generator=unset)

    def enabled(self, flag: Flag, key: str) -> bool:
        """Whether `flag` is on for the conversation with this key (`tenant/id`)."""
        share = self.percent[flag]
        if share >= 100:
            return True
        if share <= 0:
            return False
        return bucket(flag, key) < round(share * BUCKETS / 100)

    def evaluate(self, key: str) -> dict[str, bool]:
        """Every flag's value for one conversation: what a turn carries and its lineage records.
        Without `llm_generator` when it is set nowhere: the API's generator setting must not overrule
        the workers' (deployments that set `openai` on the workers alone keep their LLM)."""
        return {
            flag: self.enabled(flag, key)
            for flag in FLAGS
            if not (flag == "llm_generator" and self.unset_generator)
        }

    def may_be_on(self, flag: Flag) -> bool:
        """Whether some conversation may have `flag` on: what a worker must be ready for."""
        return self.percent[flag] > 0


def deployment_flags(settings: Settings, bot: BotDefinition) -> FeatureFlags:
    """The flags of a bot as this deployment serves it."""
    return FeatureFlags.resolve(settings.flags, bot.flags, generator=settings.generator)
