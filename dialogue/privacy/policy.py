"""A bot's privacy policy applied to text: what is redacted before it is stored, and before an LLM sees it."""

from __future__ import annotations

from dialogue.bot import Privacy
from dialogue.privacy.redaction import Redactor


class PrivacyPolicy:
    def __init__(self, privacy: Privacy) -> None:
        self.mode = privacy.redact
        self._redactor = Redactor.default(privacy.patterns)

    def for_storage(self, text: str) -> str:
        """The text as it may enter Temporal, the store and the logs."""
        return self._redactor.redact(text).text if self.mode == "storage" else text

    def for_llm(self, text: str) -> str:
        """The text as it may be sent to an external LLM."""
        return self._redactor.redact(text).text if self.mode != "off" else text
