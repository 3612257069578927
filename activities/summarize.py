"""`summarize`: fold a conversation's older turns into its rolling summary (dialogue/brain/llm/summary.py)."""

from __future__ import annotations

import asyncio

from sqlalchemy.engine import Engine
from temporalio import activity

from dialogue.brain.generation import Generators
from dialogue.brain.llm.context import ROLES, Said
from dialogue.brain.llm.summary import extractive, fold_with_model
from dialogue.model.contracts import RollingSummary, SummarizeRequest
from dialogue.platform import store
from dialogue.platform.bot import BotDefinition
from dialogue.security.privacy.privacy_policy import PrivacyPolicy

MAX_FOLDED_ROWS = 400
"""Rows one fold reads at most: the workflow asks for a fold whenever turns drop out of the budget, so
there are never many; a bound all the same."""


class SummarizeActivity:
    def __init__(self, bot: BotDefinition, engine: Engine, generators: Generators) -> None:
        self._bot = bot
        self._engine = engine
        self._generators = generators
        self._redact = PrivacyPolicy(bot.privacy).for_llm

    @activity.defn(name="summarize")
    async def summarize(self, request: SummarizeRequest) -> RollingSummary:
        """The previous summary with the turns up to `through` folded in: by the model, or extractively."""
        start = request.previous.through if request.previous is not None else 0
        rows = await asyncio.to_thread(
            store.recent_messages,
            self._engine,
            request.conversation_id,
            start=start,
            end=request.through,
            limit=MAX_FOLDED_ROWS,
        )
        messages = [Said(index, role, text) for index, role, text in rows if role in ROLES]  # type: ignore[arg-type]
        model = self._generators.model(request.variant)
        if self._bot.llm.summarizer == "extractive" or model is None:
            return extractive(request.previous, messages, request.through)
        return await fold_with_model(
            model,
            previous=request.previous,
            messages=messages,
            through=request.through,
            bot_description=self._bot.description,
            redact=self._redact if request.redact else str,
        )
