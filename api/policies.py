"""What the API applies to a conversation before its turn reaches the workflow: the privacy policy that
redacts the user's words, and the feature flags the turn carries. Both are the bot's, of the version the
conversation gets by its release (stable, or the canary by hash: `dialogue.platform.releases`); while the
bot has no release, the deployment's bot file's.

A conversation started before a release changed is judged by the version a new one of its key would get
now (the API does not read the workflow's state for every request); and a conversation of another bot
than the deployment's is judged by the deployment's bot after its creation (docs/releases.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import yaml

from dialogue.platform.bot import BotDefinition
from dialogue.platform.flags import FeatureFlags, Flag, deployment_flags
from dialogue.platform.releases import ReleaseCache
from dialogue.platform.settings import Settings
from dialogue.security.privacy.privacy_policy import PrivacyPolicy


@dataclass(frozen=True)
class Policy:
    privacy: PrivacyPolicy
    flags: FeatureFlags


class BotPolicies:
    def __init__(self, settings: Settings, own: BotDefinition, releases: ReleaseCache) -> None:
        self._settings = settings
        self._releases = releases
        self._own = Policy(PrivacyPolicy(own.privacy), deployment_flags(settings, own))
        self._by_version: dict[tuple[str, str], Policy] = {}

    def of(self, key: str, bot: str | None = None) -> Policy:
        """The policy of the version the conversation with this key gets (of `bot`, the deployment's when
        None); the deployment's bot file's when that version's definition is not at hand."""
        choice = self._releases.choose(bot, key)
        if choice is None or choice.source == "files":
            return self._own
        ref = (choice.ref.bot, choice.ref.version)
        policy = self._by_version.get(ref)
        if policy is None:
            text = self._releases.definitions.get(ref)
            if text is None:
                return self._own
            bot_definition = BotDefinition.model_validate(yaml.safe_load(text) or {})
            policy = Policy(
                PrivacyPolicy(bot_definition.privacy), deployment_flags(self._settings, bot_definition)
            )
            self._by_version[ref] = policy
        return policy

    def privacy(self, key: str) -> PrivacyPolicy:
        return self.of(key).privacy

    def evaluate(self, key: str) -> dict[str, bool]:
        """The flags a turn of this conversation carries (`FeatureFlags.evaluate` of its version)."""
        return self.of(key).flags.evaluate(key)

    def enabled(self, flag: Flag, key: str) -> bool:
        return self.of(key).flags.enabled(flag, key)
