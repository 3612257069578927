"""The NLU backends behind the `understand` activity and `POST /v1/nlu/parse`.

- `keywords`: intent by the keyword phrases of the bot definition; no training needed.
- `trained`: the classifier trained with `dialogue nlu train` (see `model.py`).

Both add entities (the bot's patterns and lookups, built-ins) and sentiment.
"""

from __future__ import annotations

from typing import Protocol

from dialogue.brain.nlu.data import OUT_OF_SCOPE
from dialogue.brain.nlu.entities import EntityExtractor
from dialogue.brain.nlu.model import TrainedModel, has_model, load
from dialogue.brain.nlu.routing import Router
from dialogue.brain.nlu.sentiment import sentiment
from dialogue.brain.text import words
from dialogue.model.contracts import IntentPrediction, NluResult
from dialogue.platform.bot import BotDefinition
from dialogue.platform.settings import Settings


class NluParser(Protocol):
    name: str
    router: Router | None
    """Weighs the NLU result against the knowledge base's evidence (a trained model's, when it has one)."""

    def parse(self, text: str) -> NluResult: ...


class KeywordParser:
    """Scores each intent by the keyword phrases found in the text, as whole words."""

    name = "keywords"
    router: Router | None = None

    def __init__(self, bot: BotDefinition) -> None:
        self._bot = bot
        self._phrases = [
            (intent.name, [tuple(words(k)) for k in intent.keywords if words(k)]) for intent in bot.intents
        ]
        self._entities = EntityExtractor(patterns=bot.entity_patterns, lookups=bot.lookups)

    def parse(self, text: str) -> NluResult:
        tokens = words(text)
        scored = []
        for name, phrases in self._phrases:
            # A longer phrase is stronger evidence than a single word.
            hits = sum(len(p) for p in phrases if _contains(tokens, p))
            if hits:
                # 1 word -> 0.5, 2 -> 0.75, 3 -> 0.875: more evidence, more confidence, never 1.
                scored.append(IntentPrediction(name=name, confidence=round(1 - 0.5**hits, 4)))
        scored.sort(key=lambda p: p.confidence, reverse=True)
        intent = scored[0] if scored else IntentPrediction(name=OUT_OF_SCOPE, confidence=1.0)
        return _result(self._bot, intent, scored[:5], self._entities, text, self.name)


class ModelParser:
    name = "trained"
    router: Router | None

    def __init__(self, bot: BotDefinition, model: TrainedModel) -> None:
        assert model.metadata is not None
        self._bot = bot
        self._model = model
        self._version = f"trained:{model.metadata.version}"
        self.router = model.router
        self._entities = EntityExtractor(
            patterns=bot.entity_patterns, lookups=bot.lookups, learned=model.learned_entities
        )

    def parse(self, text: str) -> NluResult:
        prediction = self._model.classifier.predict([text])[0]
        ranking = [IntentPrediction(name=n, confidence=round(p, 4)) for n, p in prediction.ranking]
        intent = IntentPrediction(name=prediction.intent, confidence=round(prediction.confidence, 4))
        return _result(self._bot, intent, ranking, self._entities, text, self._version)


def _result(
    bot: BotDefinition,
    intent: IntentPrediction,
    ranking: list[IntentPrediction],
    entities: EntityExtractor,
    text: str,
    model: str,
) -> NluResult:
    declared = bot.intent(intent.name)
    return NluResult(
        intent=intent,
        ranking=ranking,
        entities=entities.extract(text),
        sentiment=sentiment(text),
        action=declared.action if declared else "answer",
        model=model,
    )


def _contains(tokens: list[str], phrase: tuple[str, ...]) -> bool:
    n = len(phrase)
    return any(tuple(tokens[i : i + n]) == phrase for i in range(len(tokens) - n + 1))


def build_parser(settings: Settings, bot: BotDefinition) -> NluParser:
    """The backend `settings.nlu_backend` names; `auto` takes the trained model when there is one."""
    folder = settings.nlu_model_path(bot.name)
    if settings.nlu_backend == "keywords" or (settings.nlu_backend == "auto" and not has_model(folder)):
        return KeywordParser(bot)
    return ModelParser(bot, load(folder))
