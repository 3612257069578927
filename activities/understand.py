"""`understand`: the NLU backend chosen in settings, then the dialogue policy's decision."""

from __future__ import annotations

from temporalio import activity

from dialogue.bot import BotDefinition
from dialogue.llm.followup import is_follow_up
from dialogue.nlu.parser import NluParser
from dialogue.policy import decide
from workflows.contracts import Understanding, UnderstandRequest


class UnderstandActivity:
    def __init__(self, bot: BotDefinition, parser: NluParser) -> None:
        self._bot = bot
        self._parser = parser

    @activity.defn(name="understand")
    async def understand(self, request: UnderstandRequest) -> Understanding:
        """Intent, entities and sentiment of the user's text, and what the bot should do next."""
        nlu = self._parser.parse(request.text)
        decision = decide(
            self._bot,
            nlu,
            request.dialogue,
            follow_up=is_follow_up(request.text),
            agent_mode=request.agent_mode and self._bot.mode == "agent",
        )
        return Understanding(nlu=nlu, decision=decision)
