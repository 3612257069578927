"""Answer generation backends: `grounded` (extractive, no model) and `openai` (any compatible endpoint)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from dialogue.brain.generation.grounded import Answer, GroundedGenerator, Relevance
from dialogue.brain.generation.prompts import Prompt
from dialogue.brain.llm.context import Conversation
from dialogue.brain.nlu.embeddings import embeddings_available, similarities
from dialogue.model.contracts import Passage
from dialogue.platform.bot import BotDefinition, LlmSettings
from dialogue.platform.flags import deployment_flags
from dialogue.platform.settings import Settings

if TYPE_CHECKING:
    from dialogue.brain.generation.model_client import ModelClient
    from dialogue.brain.generation.openai_chat import ChatClient

log = logging.getLogger("dialogue.brain.generation")


class AnswerGenerator(Protocol):
    name: str
    """`grounded` or `openai:<model>`: recorded in the reply's lineage."""
    prompt: Prompt | None
    remote: bool
    """True when answering calls a model over the network: such an answer is made by the `generate`
    activity (retried, heartbeating), not inside the turn's workflow task."""

    @property
    def model_client(self) -> ModelClient | None:
        """The model this generator answers with, for the steps around an answer (the agent's steps, the
        summary, the query rewrite, a request rebuilt for lineage); None for a generator without one."""
        ...

    async def answer(
        self,
        question: str,
        passages: list[Passage],
        *,
        on_token: Callable[[str], None] | None = None,
        redact: bool = True,
        conversation: Conversation | None = None,
    ) -> Answer | None:
        """An answer from the passages, or None (or one marked not found) when they hold none; `on_token`
        sees each piece of text as it is produced (generators that produce it all at once may never call
        it). `redact` is the conversation's `redaction` flag, for generators that send the question
        elsewhere; `conversation`, what was said before, for generators that show it to a model."""
        ...


@dataclass(frozen=True)
class Generators:
    """The generators a worker answers with: the configured one, and one for each side of the
    `llm_generator` flag."""

    configured: AnswerGenerator
    """`DIALOGUE_GENERATOR`'s: for turns that carry no flags (sent before flags existed)."""
    grounded: AnswerGenerator
    llm: AnswerGenerator | None = None
    """Built when the LLM is the configured generator or the flag may turn it on for some conversation."""
    llm_variant: AnswerGenerator | None = None
    """The LLM with the bot's `llm.variant` settings, for the conversations the `llm_variant` flag puts on it."""

    @classmethod
    def only(cls, generator: AnswerGenerator) -> Generators:
        """One generator for every turn, whatever its flags."""
        return cls(configured=generator, grounded=generator, llm=generator)

    def model(self, variant: bool = False) -> ModelClient | None:
        """The LLM generator's model (the variant's for `variant`), if this worker has one: for the steps
        around an LLM answer (agent, summary, query rewrite), which need a model only when the conversation
        has one."""
        generator = self.llm_variant if variant and self.llm_variant is not None else self.llm
        return generator.model_client if generator is not None else None

    def choose(self, llm: bool | None, variant: bool = False) -> AnswerGenerator:
        """The generator for a turn whose `llm_generator` flag is `llm` (None: the turn has no flags) and
        whose `llm_variant` flag is `variant`."""
        if llm is False:
            return self.grounded
        chosen = self.configured if llm is None else self.llm
        if chosen is None:
            # The API's flags say LLM but this worker's settings never let the flag on: a configuration
            # being rolled out. Answer all the same; the lineage names the generator that did.
            log.warning("the llm_generator flag is on for a turn, but this worker has no LLM generator")
            return self.configured
        if variant and chosen is self.llm and self.llm_variant is not None:
            return self.llm_variant
        return chosen


def build_generators(settings: Settings, bot: BotDefinition) -> Generators:
    """The worker's generators: the LLM one only when some conversation may be answered by it."""
    relevance = Relevance(min_semantic=bot.min_semantic_score, min_lexical=bot.min_answer_score)
    # Sentences are weighed by meaning too where the embedding model is installed (it is loaded for the NLU).
    grounded = GroundedGenerator(relevance, similarities if embeddings_available() else None)
    if settings.generator != "openai" and not deployment_flags(settings, bot).may_be_on("llm_generator"):
        return Generators(configured=grounded, grounded=grounded)

    from dialogue.brain.generation.openai_chat import OpenAIChatGenerator
    from dialogue.security.privacy.privacy_policy import PrivacyPolicy

    def generator(llm_settings: LlmSettings) -> OpenAIChatGenerator:
        return OpenAIChatGenerator(
            chat_client(settings, llm_settings),
            llm_settings,
            bot_description=bot.description,
            relevance=relevance,
            redact=PrivacyPolicy(bot.privacy).for_llm,
        )

    llm = generator(bot.llm)
    variant = generator(bot.llm.with_variant()) if bot.llm.variant is not None else None
    return Generators(
        configured=llm if settings.generator == "openai" else grounded,
        grounded=grounded,
        llm=llm,
        llm_variant=variant,
    )


def chat_client(settings: Settings, llm_settings: LlmSettings) -> ChatClient:
    """The endpoint of the deployment (`DIALOGUE_LLM_*`) with the bot's model, else the deployment's."""
    from dialogue.brain.generation.openai_chat import ChatClient

    return ChatClient(
        base_url=settings.llm_base_url,
        model=llm_settings.model or settings.llm_model,
        api_key=settings.llm_api_key,
        timeout_seconds=settings.llm_timeout_seconds,
    )
