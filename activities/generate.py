"""`generate`: the reply to a turn — a response template, an answer from the knowledge base
(grounded or by an LLM), a clarifying question, or a fallback — worded from the bot definition."""

from __future__ import annotations

from temporalio import activity
from temporalio.exceptions import ApplicationError

from dialogue.bot import BotDefinition
from dialogue.generation import AnswerGenerator
from workflows.contracts import OUT_OF_SCOPE, GenerateRequest, Reply


class ReplyComposer:
    def __init__(self, bot: BotDefinition, generator: AnswerGenerator) -> None:
        self._bot = bot
        self._generator = generator

    async def compose(self, request: GenerateRequest) -> Reply:
        bot, nlu, turn = self._bot, request.nlu, request.turn_index
        if nlu.intent.name == OUT_OF_SCOPE:
            return Reply(text=_pick(bot.fallback_responses, turn))
        clarifying = self._clarifying_question(request)
        if clarifying is not None:
            return Reply(text=clarifying)
        intent = bot.intent(nlu.intent.name)
        templates = intent.responses if intent else []
        if intent is not None and intent.action == "respond" and templates:
            return Reply(text=_render(_pick(templates, turn)))
        answer = await self._generator.answer(request.text, request.passages)
        prompt = self._generator.prompt
        lineage = {
            "generator": self._generator.name,
            "prompt_id": prompt.id if prompt else None,
            "prompt_hash": prompt.hash if prompt else None,
        }
        if answer is None:
            return Reply(text=_pick(bot.no_answer_responses, turn), **lineage)
        template = _pick(templates, turn) if templates else bot.answer_template
        return Reply(text=_render(template, answer=answer.text), sources=answer.sources, **lineage)

    def _clarifying_question(self, request: GenerateRequest) -> str | None:
        ranking = [p for p in request.nlu.ranking if p.name != OUT_OF_SCOPE]
        if request.nlu.intent.confidence >= self._bot.clarify_below or len(ranking) < 2:
            return None
        first, second = (self._bot.intent(p.name) for p in ranking[:2])
        if first is None or second is None:
            return None
        return _render(
            self._bot.clarify_template,
            first=first.title or first.name.replace("_", " "),
            second=second.title or second.name.replace("_", " "),
        )


def _render(template: str, **values: str) -> str:
    try:
        return template.format(**values)
    except (KeyError, IndexError, ValueError) as err:
        # A broken template is bad configuration: retrying cannot fix it.
        raise ApplicationError(
            f"response template {template!r} is invalid: {err!r}", type="BadTemplate", non_retryable=True
        ) from err


def _pick(options: list[str], turn_index: int) -> str:
    # Rotate by turn index: varied, and the same on every replay.
    return options[turn_index % len(options)]


class GenerateActivity:
    def __init__(self, composer: ReplyComposer) -> None:
        self._composer = composer

    @activity.defn(name="generate")
    async def generate(self, request: GenerateRequest) -> Reply:
        """The reply text, its sources, and what produced it."""
        return await self._composer.compose(request)
