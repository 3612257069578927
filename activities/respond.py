"""`respond_here`: a turn's understanding, retrieval and reply in one local activity.

Each of the three takes milliseconds on this worker and keeps nothing another worker would need, so
recording each as a step of its own bought nothing a retry of all three would not: one step instead of
three saves the worker two local-activity round trips and two workflow activations a turn (their
encoding, encryption and bookkeeping cost more CPU than the NLU itself; bench/profile.py). What cannot be
done here in milliseconds (a flow's tool, the agent, a reply from a model) is left to the workflow's own
steps, with the understanding and passages found here.

When it makes the reply and the workflow sent the turn's transcript entry (`RecordHere`), it writes the
turn to the store as well: the workflow's own `record_turn` step would cost another local activity and
workflow activation. That write is provisional (it never replaces what the workflow writes for the turn
after a deadline), and a failed or slow one is left to the workflow, which records the turn as before.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from temporalio import activity

from activities.generate import GenerateActivity
from activities.record import write_turn
from activities.retrieve import RetrieveActivity
from activities.understand import UnderstandActivity
from dialogue.brain import memory as memory_rules
from dialogue.brain.nlu.embeddings import once_per_text
from dialogue.model.contracts import (
    Decision,
    Entity,
    Lineage,
    MemoryOffer,
    NluResult,
    RecordHere,
    RecordTurnRequest,
    Reply,
    RespondedHere,
    RespondHereRequest,
    RetrieveResult,
    Understanding,
)
from dialogue.platform import memory
from dialogue.platform.metrics import STEP_SECONDS

log = logging.getLogger("dialogue.activities")

RECORD_HERE_SECONDS = 2.0
"""How long the reply waits for its write here: past it the workflow records the turn (its recorder keeps
a write the store cannot take and makes it later), as it did before this step wrote it."""
RECORD_HERE_THREADS = 2
"""The writes made here run on threads of their own, at most this many at once; with all of them busy (the
store is slow) the workflow records the turn. A write that outlives RECORD_HERE_SECONDS still holds its
thread until the store answers: without this bound, a stalled store would take the threads the NLU
runs on."""
_writers = ThreadPoolExecutor(max_workers=RECORD_HERE_THREADS, thread_name_prefix="record-here")
_writing = threading.BoundedSemaphore(RECORD_HERE_THREADS)


class RespondActivity:
    def __init__(
        self,
        understand: UnderstandActivity,
        retrieve: RetrieveActivity,
        generate: GenerateActivity,
        engine: Engine | None = None,
        memory_days: float | None = None,
        *,
        ask_consent: bool = False,
    ) -> None:
        self._understand = understand
        self._retrieve = retrieve
        self._generate = generate
        self._engine = engine
        """The store the turn is written to when the reply is made here; None: the workflow records it."""
        self._memory_days = memory_days
        """How long what a user says of themself is remembered: the bot's retention period."""
        self._ask_consent = ask_consent
        """The bot's `memory.ask`: offer to remember a user who was never asked."""

    @activity.defn(name="respond_here")
    async def respond_here(self, request: RespondHereRequest) -> RespondedHere:
        """Understand the text, search the knowledge base when the reply is made from it, and compose the
        reply when no tool, agent or model is needed. A failure to understand fails the step (the
        workflow then runs the steps one by one, each with its own fallback); a failed search is noted
        and the reply made without passages, as when retrieval fails on its own."""
        with once_per_text():  # the utterance is embedded once, for all three
            return await self._respond(request)

    async def _respond(self, request: RespondHereRequest) -> RespondedHere:
        started = time.perf_counter()
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
        context = request.generate.context
        user = context.user if context is not None and self._engine is not None else None
        about_memory = _about_memory(request) if user is not None else None
        if user is not None and about_memory is not None:
            # "What do you know about me?", "forget my address", a yes to the offer to remember: answered
            # from and to the user's memory, and done. Only such a message goes to a thread for the store.
            with _part("compose", timings):
                said = await asyncio.to_thread(self._memory_reply, request, user, about_memory)
            timings["generate"] = timings.pop("compose")
            understanding = Understanding(
                nlu=understanding.nlu,
                decision=Decision(
                    action="respond",
                    dialogue=request.understand.dialogue.model_copy(update={"memory_offer": None}),
                ),
                needs_knowledge=False,
            )
            return await self._replied(request, understanding, said, None, failed, timings, started)
        wanted = self._understand.remembered_slot(understanding.decision) if user is not None else None
        if user is not None and wanted is not None:
            understanding = await asyncio.to_thread(
                self._fill_from_memory, request, understanding, nlu, evidence, user, wanted
            )
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
        if understanding.decision.tool is not None or understanding.decision.action == "agent":
            return RespondedHere(
                understanding=understanding, retrieved=retrieved, failed=failed, timings_ms=timings
            )
        facts = self._facts_to_offer(request, understanding) if user is not None and self._ask_consent else {}
        if user is not None and facts:
            understanding = await asyncio.to_thread(self._offer_memory, request, understanding, user, facts)
        decision = understanding.decision
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
        if composed.reply is None:  # the model's reply is made and timed by `generate`
            return RespondedHere(
                understanding=understanding, retrieved=retrieved, failed=failed, timings_ms=timings
            )
        timings["generate"] = composing
        return await self._replied(
            request, understanding, composed.reply, retrieved, failed, timings, started
        )

    def _memory_reply(
        self, request: RespondHereRequest, user: str, about: bool | memory_rules.MemoryRequest
    ) -> Reply:
        """The reply to a message about the user's memory (`_about_memory`): a yes or no to the previous
        reply's offer to remember them, or a request to see or forget what is remembered."""
        assert self._engine is not None and request.generate.context is not None
        conversation_id = request.generate.context.conversation_id
        offered = request.understand.dialogue.memory_offer
        if isinstance(about, bool):
            assert offered is not None
            now = datetime.now(UTC)
            return memory_rules.consent_answered(
                self._engine,
                conversation_id=conversation_id,
                user=user,
                offered=offered,
                consented=about,
                at=now,
                expires_at=now + timedelta(days=self._memory_days) if self._memory_days is not None else None,
            )
        return memory_rules.answered(self._engine, memory.tenant_of(conversation_id), user, about)

    @staticmethod
    def _facts_to_offer(request: RespondHereRequest, understanding: Understanding) -> dict[str, str]:
        """What the user said of themself that the reply may offer to remember (`memory.ask`): outside a
        flow only, whose question the user's next message answers. Read by the rules, on the event loop:
        most messages state nothing, and only those that do are worth a trip to the store."""
        decision = understanding.decision
        if decision.action not in ("respond", "answer", "fallback") or decision.dialogue.active_flow:
            return {}
        return {
            f.kind: f.value
            for f in memory_rules.facts_in(request.understand.text, understanding.nlu.entities)
        }

    def _offer_memory(
        self, request: RespondHereRequest, understanding: Understanding, user: str, facts: dict[str, str]
    ) -> Understanding:
        """The decision to end the reply with the offer to remember `facts`, when the user was never
        asked (the composer words it, here or in `generate`)."""
        decision = understanding.decision
        if self._engine is None or request.generate.context is None:
            return understanding
        tenant = memory.tenant_of(request.generate.context.conversation_id)
        if memory.consent(self._engine, tenant=tenant, user=user) is not None:
            return understanding  # asked before (or set on the page): their answer stands
        turn_id = request.record.turn_id if request.record is not None else None
        offered = MemoryOffer(facts=facts, turn_id=turn_id, question=memory_rules.offer(facts))
        return understanding.model_copy(
            update={"decision": decision.model_copy(update={"memory_offer": offered})}
        )

    def _fill_from_memory(
        self,
        request: RespondHereRequest,
        understanding: Understanding,
        nlu: NluResult,
        evidence: RetrieveResult | None,
        user: str,
        wanted: tuple[str, str],
    ) -> Understanding:
        """A flow about to ask for a slot the end user's memory holds (`wanted`: "where is my order?"
        from someone who asked about NW-482913 last time) goes on with the remembered value instead, as if
        they had said it, and the decision names the item; a value the flow refuses leaves the question
        asked."""
        if self._engine is None or request.generate.context is None:
            return understanding
        entity, kind = wanted
        tenant = memory.tenant_of(request.generate.context.conversation_id)
        item = memory.item(self._engine, tenant=tenant, user=user, kind=kind)
        if item is None:
            return understanding
        said = Entity(entity=entity, value=item.value, start=0, end=0)
        filled = self._understand.conclude(
            request.understand, nlu.model_copy(update={"entities": [*nlu.entities, said]}), evidence
        )
        slot = understanding.decision.dialogue.requested_slot
        if slot is None or filled.decision.dialogue.requested_slot == slot:
            return understanding  # refused (the pattern has changed since): ask as before
        decision = filled.decision.model_copy(update={"remembered": {slot: memory_rules.memory_use(item)}})
        # The NLU result stays what the user's words gave: the lineage shows the value came from memory.
        return Understanding(nlu=understanding.nlu, decision=decision, needs_knowledge=filled.needs_knowledge)

    async def _replied(
        self,
        request: RespondHereRequest,
        understanding: Understanding,
        reply: Reply,
        retrieved: RetrieveResult | None,
        failed: list[str],
        timings: dict[str, float],
        started: float,
    ) -> RespondedHere:
        """The step's result for a reply made here, the turn written with it when the workflow asked."""
        recorded: Lineage | None = None
        if request.record is not None and _kept(understanding.decision, request.record):
            lineage = _lineage(request.record, understanding, reply, retrieved, failed, timings)
            lineage.timings_ms["total"] = round((time.perf_counter() - started) * 1000, 1)
            recorded = await self._record(request.record, understanding, reply, lineage, timings)
        return RespondedHere(
            understanding=understanding,
            retrieved=retrieved,
            reply=reply,
            failed=failed,
            timings_ms=timings,
            recorded=recorded,
        )

    async def _record(
        self,
        turn: RecordHere,
        understanding: Understanding,
        reply: Reply,
        lineage: Lineage,
        timings: dict[str, float],
    ) -> Lineage | None:
        """Write the turn as the workflow's `record_turn` would; the lineage written, or None if the store
        did not take it within RECORD_HERE_SECONDS (the workflow then records the turn)."""
        if self._engine is None or not _writing.acquire(blocking=False):
            return None
        engine = self._engine
        write = RecordTurnRequest(
            conversation_id=turn.conversation_id,
            turn_id=turn.turn_id,
            turn_index=turn.turn_index,
            user_text=turn.user_text,
            reply=reply.model_copy(update={"context": None}),
            nlu=understanding.nlu,
            degraded=bool(lineage.degraded_reason),
            at=turn.at,
            lineage=lineage,
            provisional=True,
            user=turn.user,
        )

        def write_here() -> None:
            try:
                write_turn(engine, write, self._memory_days)
            finally:
                _writing.release()

        try:
            # Timed as the workflow's `record` step, and under `record_turn` in the step metric.
            with _part("record", timings, metric="record_turn"):
                writing = asyncio.get_running_loop().run_in_executor(_writers, write_here)
                await asyncio.wait_for(writing, RECORD_HERE_SECONDS)
        except Exception as err:  # any failure of the store: the workflow's recorder takes the write over
            log.warning("the turn was not written with its reply; the workflow records it: %r", err)
            return None
        return lineage


def _kept(decision: Decision, turn: RecordHere) -> bool:
    """Whether the workflow keeps this step's reply: it makes its own for a handoff no person may take."""
    return decision.action != "handoff" or turn.handoff_allowed


def _lineage(
    turn: RecordHere,
    understanding: Understanding,
    reply: Reply,
    retrieved: RetrieveResult | None,
    failed: list[str],
    timings: dict[str, float],
) -> Lineage:
    """The lineage the workflow would give this reply (`Answer.trace`)."""
    return Lineage.of_reply(
        reply,
        understanding.nlu,
        timings_ms=dict(timings),
        degraded_reason=", ".join(failed) or None,
        flags=turn.flags,
        query=retrieved.query if retrieved else None,
        action=understanding.decision.action,
        bot=turn.bot,
        bot_version=turn.bot_version,
    )


def _about_memory(request: RespondHereRequest) -> bool | memory_rules.MemoryRequest | None:
    """Whether the message is about the user's memory, by the rules alone (no store, so on the event
    loop): the yes (True) or no (False) to the previous reply's offer to remember them, a request to see
    or forget what is remembered, or None for any other message."""
    text = request.understand.text
    if request.understand.dialogue.memory_offer is not None:
        said = memory_rules.consent_in(text)
        if said is not None:
            return said
    return memory_rules.request_in(text)


@contextmanager
def _part(step: str, timings: dict[str, float], metric: str | None = None) -> Iterator[None]:
    """Time one part into `timings` (as the workflow times a step) and into the step metric, under the
    step's own name (or `metric`), so that dashboards of `understand`, `retrieve`, `compose` and
    `record_turn` go on showing them."""
    started = time.perf_counter()
    outcome = "error"
    try:
        yield
        outcome = "ok"
    finally:
        seconds = time.perf_counter() - started
        timings[step] = round(seconds * 1000, 1)
        STEP_SECONDS.labels(metric or step, outcome).observe(seconds)
