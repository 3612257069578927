"""`generate`: the grounded template generator — a response template and the best passage with its source."""

from __future__ import annotations

from temporalio import activity
from temporalio.exceptions import ApplicationError

from dialogue.bot import BotDefinition
from workflows.contracts import GenerateRequest, Passage, Reply, Source


class TemplateGenerator:
    def __init__(self, bot: BotDefinition) -> None:
        self._bot = bot

    def generate(self, request: GenerateRequest) -> Reply:
        intent = self._bot.intent(request.nlu.intent.name)
        templates = intent.responses if intent else []
        if intent is not None and intent.action == "respond" and templates:
            return Reply(text=_pick(templates, request.turn_index))

        best = self._trusted_passage(request.passages)
        if best is None:
            return Reply(text=_pick(self._bot.fallback_responses, request.turn_index))
        template = _pick(templates, request.turn_index) if templates else self._bot.answer_template
        source = Source(
            document_id=best.document_id,
            title=best.title,
            url=best.url,
            snippet=best.text[:240],
            score=best.score,
        )
        try:
            text = template.format(answer=best.text)
        except (KeyError, IndexError, ValueError) as err:
            # A broken template is bad configuration: retrying cannot fix it.
            raise ApplicationError(
                f"response template {template!r} is invalid: {err!r}", type="BadTemplate", non_retryable=True
            ) from err
        return Reply(text=text, sources=[source])

    def _trusted_passage(self, passages: list[Passage]) -> Passage | None:
        best = max(passages, key=lambda p: p.score, default=None)
        return best if best is not None and best.score >= self._bot.min_answer_score else None


def _pick(options: list[str], turn_index: int) -> str:
    # Rotate by turn index: varied, and the same on every replay.
    return options[turn_index % len(options)]


class GenerateActivity:
    def __init__(self, generator: TemplateGenerator) -> None:
        self._generator = generator

    @activity.defn(name="generate")
    async def generate(self, request: GenerateRequest) -> Reply:
        """The reply text and its sources."""
        return self._generator.generate(request)
