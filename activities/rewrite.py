"""`rewrite_query`: a follow-up made standalone for retrieval, by the LLM when the bot lets it, else by
the heuristic of `dialogue.brain.llm.followup`."""

from __future__ import annotations

from temporalio import activity

from dialogue.brain.generation import Generators
from dialogue.brain.llm.followup import standalone_query
from dialogue.model.contracts import RewriteRequest, RewriteResult
from dialogue.platform.bot import BotDefinition
from dialogue.security.privacy.privacy_policy import PrivacyPolicy

MAX_QUERY_TOKENS = 80
MAX_REPLY_CHARS = 400
"""Of the previous answer, the rewrite sees its start: enough to say what "it" is."""


class RewriteActivity:
    def __init__(self, bot: BotDefinition, generators: Generators) -> None:
        self._bot = bot
        self._generators = generators
        self._redact = PrivacyPolicy(bot.privacy).for_llm

    @activity.defn(name="rewrite_query")
    async def rewrite_query(self, request: RewriteRequest) -> RewriteResult:
        """The standalone question to search with."""
        model = self._generators.model(request.variant)
        if not self._bot.llm.rewrite_queries or model is None:
            return RewriteResult(
                query=standalone_query(request.text, request.previous), generator="heuristic"
            )
        redact = self._redact if request.redact else str
        prompt = model.rewrite_prompt
        completion = await model.chat(
            [
                {
                    "role": "user",
                    "content": prompt.render(
                        bot_description=self._bot.description or "an online shop.",
                        previous=redact(request.previous),
                        previous_reply=redact(request.previous_reply[:MAX_REPLY_CHARS]),
                        text=redact(request.text),
                    ),
                }
            ],
            max_tokens=MAX_QUERY_TOKENS,
            temperature=0.0,
        )
        query = " ".join(completion.text.split()).strip().strip('"')
        if not query:  # nothing usable: the heuristic's question rather than none
            return RewriteResult(
                query=standalone_query(request.text, request.previous), generator="heuristic"
            )
        return RewriteResult(query=query, generator=model.name)
