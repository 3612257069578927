"""A turn's steps up to its reply: understanding and retrieval (in one local step when it can), a flow's
tool, the agent's loop, and the reply, each step with its own fallback."""

from __future__ import annotations

import asyncio
from typing import NamedTuple

from temporalio import workflow
from temporalio.exceptions import ActivityError, CancelledError

from workflows.conversation import decisions, patches
from workflows.conversation.agent import AgentLoop
from workflows.conversation.options import (
    COMPOSE,
    GENERATE,
    RESPOND_HERE,
    RETRIEVE,
    REWRITE,
    TOOL,
    UNDERSTAND,
    run_step,
)
from workflows.conversation.replies import FALLBACK_TEXT
from workflows.conversation.state import Conversation
from workflows.conversation.step_log import StepLog

with workflow.unsafe.imports_passed_through():
    from activities.flow_tools import ToolActivity
    from activities.generate import GenerateActivity
    from activities.respond import RespondActivity
    from activities.retrieve import RetrieveActivity
    from activities.rewrite import RewriteActivity
    from activities.understand import UnderstandActivity
    from dialogue.brain.llm.followup import is_follow_up
    from dialogue.model.contracts import (
        AgentStepRecord,
        ContextRequest,
        Decision,
        GenerateRequest,
        Lineage,
        ModelCall,
        NluResult,
        ParkedAgent,
        Passage,
        RecordHere,
        Reply,
        RespondedHere,
        RespondHereRequest,
        RetrieveRequest,
        RetrieveResult,
        RewriteRequest,
        StreamTarget,
        ToolResult,
        Understanding,
        UnderstandRequest,
    )
    from dialogue.platform.flags import TurnFlags


class Outcome(NamedTuple):
    nlu: NluResult
    decision: Decision | None
    tool_result: ToolResult | None
    reply: Reply
    query: str | None = None
    """What retrieval searched with, when the message was a follow-up made standalone."""
    agent: list[AgentStepRecord] | None = None
    """An agent's steps that called tools."""
    parked: ParkedAgent | None = None
    """The agent waits for approvals of calls it asked for: the reply says so."""
    agent_answer: ModelCall | None = None
    recorded: Lineage | None = None
    """`respond_here` wrote the turn to the transcript with this lineage: the workflow does not record it."""


class TurnInput(NamedTuple):
    """What a turn's steps work from."""

    text: str
    turn_id: str
    turn_index: int
    flags: TurnFlags
    carried_flags: dict[str, bool]
    stream: StreamTarget | None


class Responder:
    def __init__(self, conversation: Conversation, agent: AgentLoop) -> None:
        self._conversation = conversation
        self._agent = agent

    async def respond(self, turn: TurnInput, log: StepLog, record: RecordHere | None = None) -> Outcome:
        """The steps of a turn up to its reply: understand and retrieve, the flow's tool, generate. With
        `record`, a reply made in `respond_here` is written to the transcript there (`Outcome.recorded`)."""
        local = self._conversation.patched(patches.LOCAL_STEPS)
        here = None
        if (
            local
            and self._conversation.patched(patches.LEAN_TURN)
            and self._conversation.patched(patches.ONE_LOCAL_STEP)
            and not self._rewrite_wanted(turn.text, turn.flags)
        ):
            here = await self._respond_here(turn, log, record)
        if here is not None:
            log.failed.extend(here.failed)
            understanding: Understanding | None = here.understanding
            retrieved: RetrieveResult | None = here.retrieved
        else:
            understanding, retrieved = await self._understand_and_retrieve(local, turn, log)
        nlu = understanding.nlu if understanding else decisions.not_understood()
        decision = decisions.without_handoff(
            understanding.decision if understanding else None, turn.flags.handoff
        )
        passages: list[Passage] = retrieved.passages if retrieved else []
        query = retrieved.query if retrieved else None
        if here is not None and here.reply is not None and decision == here.understanding.decision:
            return Outcome(nlu, decision, None, here.reply, query, recorded=here.recorded)
        tool_result = None
        if decision is not None and decision.tool is not None:
            # The tool acts for the conversation's end user: the workflow says who, never the policy.
            call = decision.tool.model_copy(update={"user": self._conversation.input.user})
            tool_result = await log.attempt(
                "tool",
                workflow.execute_activity_method(
                    ToolActivity.run_tool, call, **self._conversation.within_deadline(TOOL)
                ),
            )
        if decision is not None and decision.action == "agent":
            return await self._run_agent(turn, log, nlu, decision, tool_result, passages, query)
        # A reply `respond_here` tried to compose with this very request needs a model: straight to it.
        composed_here = here is not None and decision == here.understanding.decision and tool_result is None
        request = self._generate_request(turn, nlu, passages, decision, tool_result, query)
        reply = await log.attempt("generate", self._generate(local and not composed_here, request))
        return Outcome(nlu, decision, tool_result, reply or Reply(text=FALLBACK_TEXT), query)

    async def _run_agent(
        self,
        turn: TurnInput,
        log: StepLog,
        nlu: NluResult,
        decision: Decision,
        tool_result: ToolResult | None,
        passages: list[Passage],
        query: str | None,
    ) -> Outcome:
        """The agent answers, or waits for approvals of calls it asked for (the turn parks it)."""
        request = self._agent.request(
            turn.text, turn.turn_id, turn.turn_index, turn.flags, turn.stream, passages
        )
        run = await log.attempt("agent", self._agent.run(request, [], log))
        if run is None:
            return Outcome(nlu, decision, tool_result, Reply(text=FALLBACK_TEXT), query)
        if run.waiting is None:
            return Outcome(nlu, decision, tool_result, run.reply, query, run.steps, agent_answer=run.answer)
        parked = ParkedAgent(
            turn_id=turn.turn_id,
            turn_index=turn.turn_index,
            text=turn.text,
            nlu=nlu,
            passages=passages,
            flags=turn.carried_flags,
            streamed=turn.stream is not None,
            steps=run.steps,
            waiting=run.waiting,
            pending=run.pending,
            query=query,
        )
        return Outcome(nlu, decision, tool_result, run.reply, query, run.recorded_steps, parked)

    async def _respond_here(
        self, turn: TurnInput, log: StepLog, record: RecordHere | None
    ) -> RespondedHere | None:
        """Understanding, retrieval and (when it needs no tool, agent or model) the reply, in one local
        step; None if it failed, and the turn then takes the steps one by one, each with its fallback."""
        request = RespondHereRequest(
            understand=self._understand_request(turn),
            retrieve=RetrieveRequest(text=turn.text, previous=self._conversation.previous_query()),
            generate=self._generate_request(turn, decisions.not_understood(), [], None, None, None),
            record=record,
        )
        # A failure here is not the turn's: the steps one by one come next.
        here = await log.attempt(
            "respond_here",
            run_step(
                True, RespondActivity.respond_here, request, self._conversation.within_deadline(RESPOND_HERE)
            ),
            counts=False,
        )
        if here is not None:
            log.timings.update(here.timings_ms)
        return here

    async def _understand_and_retrieve(
        self, local: bool, turn: TurnInput, log: StepLog
    ) -> tuple[Understanding | None, RetrieveResult | None]:
        """The `understand` and `retrieve` steps, each on its own (with its own fallback)."""
        understand = log.attempt(
            "understand",
            run_step(
                local,
                UnderstandActivity.understand,
                self._understand_request(turn),
                self._conversation.within_deadline(UNDERSTAND),
            ),
        )
        retrieved: RetrieveResult | None = None
        if local and self._conversation.patched(patches.LEAN_TURN):
            # Retrieval only for a reply made from the knowledge base (or when understanding failed and
            # the fallback may answer from it): after `understand`, whose utterance vector it reuses.
            understanding = await understand
            if understanding is None or understanding.needs_knowledge:
                retrieved = await log.attempt("retrieve", self._retrieve(local, turn, log))
        else:
            # Retrieval does not depend on the intent: run it beside NLU and the policy, not after them.
            understanding, retrieved = await asyncio.gather(
                understand, log.attempt("retrieve", self._retrieve(local, turn, log))
            )
        return understanding, retrieved

    async def _retrieve(self, local: bool, turn: TurnInput, log: StepLog) -> RetrieveResult:
        """Search the knowledge base. A follow-up ("and to Austria?") of a knowledge-base answer searches
        with a standalone question: the model's (`rewrite_query`, when an LLM made that answer), else the
        heuristic's, which `retrieve` applies itself; a failed rewrite falls back to the heuristic, not to
        degraded."""
        previous = self._conversation.previous_query()
        standalone = None
        if self._rewrite_wanted(turn.text, turn.flags):
            standalone = await self._rewrite(turn, previous, log)
        return await run_step(
            local,
            RetrieveActivity.retrieve,
            RetrieveRequest(text=turn.text, previous=previous, standalone=standalone),
            self._conversation.within_deadline(RETRIEVE),
        )

    async def _rewrite(self, turn: TurnInput, previous: str | None, log: StepLog) -> str | None:
        started = workflow.time()
        last = self._conversation.last_reply()
        try:
            rewritten = await workflow.execute_activity_method(
                RewriteActivity.rewrite_query,
                RewriteRequest(
                    text=turn.text,
                    previous=previous,
                    previous_reply=last.reply.text if last is not None else "",
                    variant=turn.flags.llm_variant,
                    redact=turn.flags.redaction,
                ),
                **self._conversation.within_deadline(REWRITE),
            )
            return rewritten.query
        except ActivityError as err:
            if isinstance(err.cause, CancelledError):
                raise asyncio.CancelledError from err
            workflow.logger.warning("rewrite_query failed, the heuristic stands in: %s", err.cause or err)
            return None
        finally:
            log.time("rewrite", started)

    def _rewrite_wanted(self, text: str, flags: TurnFlags) -> bool:
        """Whether a follow-up is made standalone by the model (`rewrite_query`) before retrieval."""
        last = self._conversation.last_reply()
        return bool(
            self._conversation.previous_query()
            and is_follow_up(text)
            and (last.reply.generator if last is not None else "").startswith("openai:")  # a model answered
            and flags.llm_generator is not False
            and self._conversation.patched(patches.QUERY_REWRITE)
        )

    def _understand_request(self, turn: TurnInput) -> UnderstandRequest:
        state = self._conversation.state
        return UnderstandRequest(
            text=turn.text, dialogue=decisions.dialogue_of(state), agent_mode=turn.flags.agent
        )

    def _generate_request(
        self,
        turn: TurnInput,
        nlu: NluResult,
        passages: list[Passage],
        decision: Decision | None,
        tool_result: ToolResult | None,
        query: str | None,
    ) -> GenerateRequest:
        conversation = self._conversation
        return GenerateRequest(
            text=turn.text,
            turn_index=turn.turn_index,
            nlu=nlu,
            passages=passages,
            decision=decision,
            tool_result=tool_result,
            stream=turn.stream,
            llm=turn.flags.llm_generator,
            redact=turn.flags.redaction,
            context=ContextRequest(
                conversation_id=conversation.input.key,
                turn_index=turn.turn_index,
                user=conversation.input.user,
                summary=conversation.state.rolling_summary,
                notes=["the last summary failed: older turns are left out"]
                if conversation.state.summary_failed
                else [],
            ),
            variant=turn.flags.llm_variant,
            query=query,
        )

    async def _generate(self, local: bool, request: GenerateRequest) -> Reply:
        """The reply: made in the workflow task when no model is called, else by the `generate` activity."""
        if local:
            composed = await workflow.execute_local_activity_method(
                GenerateActivity.compose, request, **self._conversation.within_deadline(COMPOSE)
            )
            if composed.reply is not None:
                return composed.reply
        return await workflow.execute_activity_method(
            GenerateActivity.generate, request, **self._conversation.within_deadline(GENERATE)
        )
