"""`understand`: intent by keyword rules from the bot definition, entities by its patterns."""

from __future__ import annotations

import re

from temporalio import activity

from dialogue.bot import BotDefinition
from dialogue.text import words
from workflows.contracts import Entity, IntentPrediction, NluResult, UnderstandRequest

OUT_OF_SCOPE = "out_of_scope"


class KeywordNlu:
    """Scores each intent by the keyword phrases found in the text, as whole words."""

    def __init__(self, bot: BotDefinition) -> None:
        self._bot = bot
        self._phrases = [
            (intent.name, str(intent.action), [tuple(words(k)) for k in intent.keywords if words(k)])
            for intent in bot.intents
        ]
        self._entities = [(e.name, re.compile(e.pattern)) for e in bot.entities]

    def parse(self, text: str) -> NluResult:
        tokens = words(text)
        best: tuple[int, str, str] = (0, OUT_OF_SCOPE, "answer")
        for name, action, phrases in self._phrases:
            # A longer phrase is stronger evidence than a single word.
            hits = sum(len(p) for p in phrases if _contains(tokens, p))
            if hits > best[0]:
                best = (hits, name, action)
        hits, name, action = best
        # 1 word -> 0.5, 2 -> 0.75, 3 -> 0.875: more evidence, more confidence, never 1.
        confidence = 1 - 0.5**hits if hits else 1.0
        entities = [
            Entity(entity=entity, value=m.group(0), start=m.start(), end=m.end())
            for entity, pattern in self._entities
            for m in pattern.finditer(text)
        ]
        return NluResult(
            intent=IntentPrediction(name=name, confidence=round(confidence, 4)),
            entities=entities,
            action=action,
        )


def _contains(tokens: list[str], phrase: tuple[str, ...]) -> bool:
    n = len(phrase)
    return any(tuple(tokens[i : i + n]) == phrase for i in range(len(tokens) - n + 1))


class UnderstandActivity:
    def __init__(self, nlu: KeywordNlu) -> None:
        self._nlu = nlu

    @activity.defn(name="understand")
    async def understand(self, request: UnderstandRequest) -> NluResult:
        """Intent, confidence and entities of the user's text."""
        return self._nlu.parse(request.text)
