"""`respond_here`: a turn's understanding, retrieval and reply in one local activity.

Each of the three takes milliseconds on this worker and keeps nothing another worker would need, so
recording each as a step of its own bought nothing a retry of all three would not: one step instead of
three saves the worker two local-activity round trips and two workflow activations a turn (their
encoding, encryption and bookkeeping cost more CPU than the NLU itself; bench/profile.py). What cannot be
done here in milliseconds (a flow's tool, the agent, a reply from a model) is left to the workflow's own
steps, with the understanding and passages found here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.exc import SQLAlchemyError
from temporalio import activity

from activities.generate import GenerateActivity
from activities.retrieve import RetrieveActivity
from activities.understand import UnderstandActivity
from dialogue.brain.nlu.embeddings import once_per_text
from dialogue.model.contracts import RespondedHere, RespondHereRequest, RetrieveResult
from dialogue.platform.metrics import STEP_SECONDS

log = logging.getLogger("dialogue.activities")


class RespondActivity:
    def __init__(
        self, understand: UnderstandActivity, retrieve: RetrieveActivity, generate: GenerateActivity
    ) -> None:
        self._understand = understand
        self._retrieve = retrieve
        self._generate = generate

    @activity.defn(name="respond_here")
    async def respond_here(self, request: RespondHereRequest) -> RespondedHere:
        """Understand the text, search the knowledge base when the reply is made from it, and compose the
        reply when no tool, agent or model is needed. A failure to understand fails the step (the
        workflow then runs the steps one by one, each with its own fallback); a failed search is noted
        and the reply made without passages, as when retrieval fails on its own."""
        with once_per_text():  # the utterance is embedded once, for all three
            return await self._respond(request)

    async def _respond(self, request: RespondHereRequest) -> RespondedHere:
        timings: dict[str, float] = {}
        failed: list[str] = []
        # The CPU-bound parts on a thread, as when they are steps of their own: the event loop that every
        # conversation's workflow tasks share is not held up.
        with _part("understand", timings):
            nlu = await asyncio.to_thread(self._understand.parse, request.understand)
        evidence: RetrieveResult | None = None
        unsearchable = False
        if self._understand.weighs_evidence:
            # The router weighs what the knowledge base says before the policy decides; the reply reuses it.
            try:
                with _part("retrieve", timings):
                    evidence = await asyncio.to_thread(self._understand.evidence, request.retrieve)
            except SQLAlchemyError as err:  # the store is down and the index was never built
                log.warning("retrieval failed; the NLU decides alone: %s", err)
                unsearchable = True
        understanding = self._understand.conclude(request.understand, nlu, evidence)
        retrieved: RetrieveResult | None = None
        if understanding.needs_knowledge and evidence is not None:
            retrieved = evidence.model_copy(update={"passages": evidence.passages[: request.retrieve.top_k]})
        elif understanding.needs_knowledge and not unsearchable:
            try:
                with _part("retrieve", timings):
                    retrieved = await asyncio.to_thread(self._retrieve.retrieve, request.retrieve)
            except SQLAlchemyError as err:  # the store is down and the index was never built
                log.warning("retrieval failed; the reply is made without passages: %s", err)
                unsearchable = True
        if understanding.needs_knowledge and unsearchable:
            failed.append("retrieve failed")
        decision = understanding.decision
        if decision.tool is not None or decision.action == "agent":
            return RespondedHere(
                understanding=understanding, retrieved=retrieved, failed=failed, timings_ms=timings
            )
        with _part("compose", timings):
            composed = await self._generate.compose(
                request.generate.model_copy(
                    update={
                        "nlu": understanding.nlu,
                        "decision": decision,
                        "passages": retrieved.passages if retrieved else [],
                        "query": retrieved.query if retrieved else None,
                    }
                )
            )
        composing = timings.pop("compose")
        if composed.reply is not None:  # else the model's reply is timed by `generate`
            timings["generate"] = composing
        return RespondedHere(
            understanding=understanding,
            retrieved=retrieved,
            reply=composed.reply,
            failed=failed,
            timings_ms=timings,
        )


@contextmanager
def _part(step: str, timings: dict[str, float]) -> Iterator[None]:
    """Time one part into `timings` (as the workflow times a step) and into the step metric, under the
    step's own name, so that dashboards of `understand`, `retrieve` and `compose` go on showing them."""
    started = time.perf_counter()
    outcome = "error"
    try:
        yield
        outcome = "ok"
    finally:
        seconds = time.perf_counter() - started
        timings[step] = round(seconds * 1000, 1)
        STEP_SECONDS.labels(step, outcome).observe(seconds)
