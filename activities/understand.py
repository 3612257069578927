"""`understand`: the NLU backend chosen in settings (keyword rules or the trained model)."""

from __future__ import annotations

from temporalio import activity

from dialogue.nlu.parser import NluParser
from workflows.contracts import NluResult, UnderstandRequest


class UnderstandActivity:
    def __init__(self, parser: NluParser) -> None:
        self._parser = parser

    @activity.defn(name="understand")
    async def understand(self, request: UnderstandRequest) -> NluResult:
        """Intent, confidence, entities and sentiment of the user's text."""
        return self._parser.parse(request.text)
