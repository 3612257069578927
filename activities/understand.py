"""`understand`: the NLU backend chosen in settings, the router's weighing of the knowledge base's evidence,
then the dialogue policy's decision."""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy.exc import SQLAlchemyError
from temporalio import activity

from dialogue.brain.knowledge.search import ROUTER_DEPTH
from dialogue.brain.llm.followup import is_follow_up
from dialogue.brain.nlu.embeddings import shared_within
from dialogue.brain.nlu.parser import NluParser
from dialogue.brain.policy import decide
from dialogue.model.contracts import (
    Decision,
    NluResult,
    RetrieveRequest,
    RetrieveResult,
    Understanding,
    UnderstandRequest,
)
from dialogue.platform.bot import BotDefinition

log = logging.getLogger("dialogue.activities")

Retrieval = Callable[[RetrieveRequest], RetrieveResult]


class UnderstandActivity:
    """Understanding in three parts, which `respond_here` times one by one: `parse` the text, search the
    knowledge base for the router's `evidence` (when the model has a router), and `conclude`: the route and
    the policy's decision."""

    def __init__(
        self,
        bot: BotDefinition,
        parser: NluParser,
        needs_knowledge: Callable[[NluResult, Decision], bool] = lambda nlu, decision: True,
        search: Retrieval | None = None,
    ) -> None:
        """`search` gives the router its evidence; without it (or a router) the NLU result decides alone."""
        self._bot = bot
        self._parser = parser
        self._needs_knowledge = needs_knowledge
        self._search = search

    @activity.defn(name="understand")
    def understand(self, request: UnderstandRequest) -> Understanding:
        """Intent, entities and sentiment of the user's text, and what the bot should do next.

        Synchronous, so the worker runs it on a thread: the model's CPU work (an embedding, a classifier)
        must not hold up the event loop that every conversation's workflow tasks share."""
        nlu = self.parse(request)
        evidence = None
        if self.weighs_evidence:
            try:
                evidence = self.evidence(RetrieveRequest(text=request.text))
            except SQLAlchemyError as err:  # the store is down and the index was never built
                log.warning("no evidence from the knowledge base; the NLU decides alone: %s", err)
        return self.conclude(request, nlu, evidence)

    @property
    def weighs_evidence(self) -> bool:
        """Whether understanding searches the knowledge base before it decides (with a router, it always
        does: what an article says can turn any message into a question it answers)."""
        return self._parser.router is not None and self._search is not None

    def parse(self, request: UnderstandRequest) -> NluResult:
        # The utterance's vector is kept for the search of this conversation's turn, which needs it too.
        with shared_within(activity.info().workflow_id or ""):
            return self._parser.parse(request.text)

    def remembered_slot(self, decision: Decision) -> tuple[str, str] | None:
        """For a flow asking for a slot the end user's memory may fill: the slot's entity and the memory
        kind (`SlotSpec.remembered`); None otherwise."""
        flow = self._bot.flow(decision.flow)
        if decision.action != "flow_prompt" or flow is None:
            return None
        slot = next((s for s in flow.slots if s.name == decision.dialogue.requested_slot), None)
        if slot is None or slot.remembered is None:
            return None
        return slot.entity or slot.name, slot.remembered

    def evidence(self, retrieve: RetrieveRequest) -> RetrieveResult:
        """The passages the router weighs: as many as it was trained with (the reply takes its own few)."""
        assert self._search is not None
        return self._search(retrieve.model_copy(update={"top_k": max(retrieve.top_k, ROUTER_DEPTH)}))

    def conclude(
        self, request: UnderstandRequest, nlu: NluResult, evidence: RetrieveResult | None
    ) -> Understanding:
        """The route (given the evidence) and the decision."""
        router = self._parser.router
        if router is not None and evidence is not None:
            nlu = nlu.model_copy(
                update={"routing": router.route(request.text, nlu.ranking, evidence.passages)}
            )
        decision = decide(
            self._bot,
            nlu,
            request.dialogue,
            follow_up=is_follow_up(request.text),
            agent_mode=request.agent_mode and self._bot.mode == "agent",
        )
        return Understanding(nlu=nlu, decision=decision, needs_knowledge=self._needs_knowledge(nlu, decision))
