"""A bot's privacy policy applied to text: what is redacted before it is stored, and before an LLM sees it."""

from __future__ import annotations

from dialogue.platform.bot import Privacy
from dialogue.security.privacy.redaction import Redactor


class PrivacyPolicy:
    def __init__(self, privacy: Privacy) -> None:
        self.mode = privacy.redact
        self.retention_days = privacy.retention_days
        self._redactor = Redactor.default(privacy.patterns)

    def for_storage(self, text: str, *, enabled: bool = True) -> str:
        """The text as it may enter Temporal, the store and the logs; `enabled` is the conversation's
        `redaction` flag (off, the text is kept as said, whatever the policy)."""
        return self._redactor.redact(text).text if enabled and self.mode == "storage" else text

    def for_llm(self, text: str, *, enabled: bool = True) -> str:
        """The text as it may be sent to an external LLM; `enabled` as for `for_storage`."""
        return self._redactor.redact(text).text if enabled and self.mode != "off" else text

    def for_export(self, text: str) -> str:
        """The text as it may leave the system for people to read (an annotation file): redacted whatever the
        policy, since what was stored may not have been (`llm`, `off`, the `redaction` flag off)."""
        return self._redactor.redact(text).text
