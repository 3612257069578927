"""Answer generation backends: `grounded` (extractive, no model) and `openai` (any compatible endpoint)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from dialogue.bot import BotDefinition
from dialogue.generation.grounded import Answer, GroundedGenerator, Relevance
from dialogue.generation.prompts import Prompt
from dialogue.settings import Settings
from workflows.contracts import Passage


class AnswerGenerator(Protocol):
    name: str
    """`grounded` or `openai:<model>`: recorded in the reply's lineage."""
    prompt: Prompt | None

    async def answer(
        self, question: str, passages: list[Passage], *, on_token: Callable[[str], None] | None = None
    ) -> Answer | None:
        """An answer from the passages, or None when they hold none; `on_token` sees each piece of
        text as it is produced (generators that produce it all at once may never call it)."""
        ...


def build_generator(settings: Settings, bot: BotDefinition) -> AnswerGenerator:
    relevance = Relevance(min_semantic=bot.min_semantic_score, min_lexical=bot.min_answer_score)
    if settings.generator == "openai":
        from dialogue.generation.openai_chat import OpenAIChatGenerator
        from dialogue.privacy.policy import PrivacyPolicy

        return OpenAIChatGenerator(
            base_url=settings.llm_base_url,
            model=settings.llm_model,
            api_key=settings.llm_api_key,
            timeout_seconds=settings.llm_timeout_seconds,
            bot_description=bot.description,
            relevance=relevance,
            redact=PrivacyPolicy(bot.privacy).for_llm,
        )
    return GroundedGenerator(relevance)
