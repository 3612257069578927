"""`understand`: the NLU backend chosen in settings, then the dialogue policy's decision."""

from __future__ import annotations

from collections.abc import Callable

from temporalio import activity

from dialogue.bot import BotDefinition
from dialogue.contracts import Decision, NluResult, Understanding, UnderstandRequest
from dialogue.llm.followup import is_follow_up
from dialogue.nlu.embeddings import shared_within
from dialogue.nlu.parser import NluParser
from dialogue.policy import decide


class UnderstandActivity:
    def __init__(
        self,
        bot: BotDefinition,
        parser: NluParser,
        needs_knowledge: Callable[[NluResult, Decision], bool] = lambda nlu, decision: True,
    ) -> None:
        self._bot = bot
        self._parser = parser
        self._needs_knowledge = needs_knowledge

    @activity.defn(name="understand")
    def understand(self, request: UnderstandRequest) -> Understanding:
        """Intent, entities and sentiment of the user's text, and what the bot should do next.

        Synchronous, so the worker runs it on a thread: the model's CPU work (an embedding, a classifier)
        must not hold up the event loop that every conversation's workflow tasks share."""
        # The utterance's vector is handed to this conversation's `retrieve`, which needs it too.
        with shared_within(activity.info().workflow_id or ""):
            nlu = self._parser.parse(request.text)
        decision = decide(
            self._bot,
            nlu,
            request.dialogue,
            follow_up=is_follow_up(request.text),
            agent_mode=request.agent_mode and self._bot.mode == "agent",
        )
        return Understanding(nlu=nlu, decision=decision, needs_knowledge=self._needs_knowledge(nlu, decision))
