"""The agent's loop inside a turn: a model step (`agent_step`), the tool calls it asks for (each its own
activity, side by side), their outcomes back to the model, until it answers or asks for calls that wait
for a person's approval."""

from __future__ import annotations

import asyncio
from typing import NamedTuple

from temporalio import workflow
from temporalio.exceptions import ActivityError, CancelledError

from workflows.conversation import decisions
from workflows.conversation.options import AGENT_STEP, LIST_MCP_TOOLS, tool_call_options
from workflows.conversation.replies import FALLBACK_TEXT
from workflows.conversation.state import Conversation
from workflows.conversation.step_log import StepLog

with workflow.unsafe.imports_passed_through():
    from activities.agent import AgentActivity
    from dialogue.brain.agent.declarations import arguments_digest
    from dialogue.model.contracts import (
        AgentStepRecord,
        AgentStepRequest,
        AgentToolCall,
        AgentToolOutcome,
        ContextRequest,
        ModelCall,
        Passage,
        PendingApproval,
        Reply,
        StreamTarget,
    )
    from dialogue.platform.flags import TurnFlags

MAX_AGENT_STEPS = 50
"""The loop's own guard; the bot's `agent.max_steps` (enforced by `agent_step`) comes first."""
AGENT_PASSAGES = 3
AGENT_PASSAGE_CHARS = 1200
"""What of the turn's retrieval the agent's model sees (and each step's request carries through history)."""


class AgentRun(NamedTuple):
    """Where an agent's loop stopped: its answer, or the step whose calls wait for approval."""

    reply: Reply
    steps: list[AgentStepRecord]
    waiting: AgentStepRecord | None = None
    pending: list[PendingApproval] = []
    answer: ModelCall | None = None
    """The model call that wrote the answer."""

    @property
    def recorded_steps(self) -> list[AgentStepRecord]:
        """The steps that called tools, the waiting one last: what the answer's lineage shows."""
        return [*self.steps, self.waiting] if self.waiting is not None else self.steps


class AgentLoop:
    def __init__(self, conversation: Conversation) -> None:
        self._conversation = conversation

    def request(
        self,
        text: str,
        turn_id: str,
        turn_index: int,
        flags: TurnFlags,
        stream: StreamTarget | None,
        passages: list[Passage],
    ) -> AgentStepRequest:
        conversation = self._conversation
        return AgentStepRequest(
            passages=[
                p.model_copy(update={"text": p.text[:AGENT_PASSAGE_CHARS]}) for p in passages[:AGENT_PASSAGES]
            ],
            text=text,
            turn_id=turn_id,
            turn_index=turn_index,
            context=ContextRequest(
                conversation_id=conversation.input.key,
                turn_index=turn_index,
                user=conversation.input.user,
                summary=conversation.state.rolling_summary,
            ),
            llm=flags.llm_generator,
            variant=flags.llm_variant,
            redact=flags.redaction,
            stream=stream,
        )

    async def run(self, request: AgentStepRequest, steps: list[AgentStepRecord], log: StepLog) -> AgentRun:
        """The agent's loop: a model step, the tools it asks for (side by side), their outcomes back to it,
        until it answers, or until it asks for calls that need approval: the calls that need none run, the
        others wait (`Approvals.park`) and the loop stops there. The bot's limits are the `agent_step`
        activity's to keep (it makes the model answer at them); MAX_AGENT_STEPS only guards this loop."""
        steps = list(steps)
        # The MCP servers' tools, from the worker's cache while fresh: a local step (no round trip through
        # the server) that never fails (a server that cannot be listed is left out, and said so).
        listed = await workflow.execute_local_activity_method(AgentActivity.list_mcp_tools, **LIST_MCP_TOOLS)
        for server, why in listed.unavailable.items():
            workflow.logger.warning("MCP server %s left out of this turn: %s", server, why)
        request = request.model_copy(update={"mcp_tools": listed.tools})
        for _ in range(MAX_AGENT_STEPS):
            step = await workflow.execute_activity_method(
                AgentActivity.agent_step,
                request.model_copy(update={"steps": steps}),
                **self._conversation.within_deadline(AGENT_STEP),
            )
            if step.reply is not None:
                if step.limit_reached:
                    log.failed.append("agent step limit")
                return AgentRun(step.reply, steps, answer=step.model_call)
            waiting = [call for call in step.calls if call.approval is not None and call.invalid is None]
            asked = {call.call_id for call in waiting}
            outcomes = await asyncio.gather(
                *(self.call_tool(call) for call in step.calls if call.call_id not in asked)
            )
            record = AgentStepRecord(
                text=step.text,
                calls=step.calls,
                outcomes=list(outcomes),
                prompt_tokens=step.prompt_tokens,
                completion_tokens=step.completion_tokens,
                model_call=step.model_call,
            )
            if waiting:
                pending = decisions.pending_approvals(waiting, request.turn_id, workflow.now())
                return AgentRun(
                    Reply(text=decisions.asking(pending), generator="approval"), steps, record, pending
                )
            steps.append(record)
        log.failed.append("agent step limit")
        return AgentRun(Reply(text=FALLBACK_TEXT), steps)

    async def call_tool(self, call: AgentToolCall) -> AgentToolOutcome:
        """One tool call as its own activity, with the tool's own timeout and attempts; a call that must not
        run, or that failed after its attempts, is an error result for the model, not a failed turn."""
        common = {
            "call_id": call.call_id,
            "name": call.name,
            "arguments_sha256": arguments_digest(call.arguments),
        }
        if call.invalid is not None:
            return AgentToolOutcome(ok=False, error=call.invalid, **common)
        options = tool_call_options(call.timeout_seconds, call.attempts)
        # The tool acts for the conversation's end user: the workflow says who, never the model.
        call = call.model_copy(update={"user": self._conversation.input.user})
        try:
            run = AgentActivity.call_mcp_tool if call.kind == "mcp" else AgentActivity.call_tool
            return await workflow.execute_activity_method(
                run, call, **self._conversation.within_deadline(options)
            )
        except ActivityError as err:
            if isinstance(err.cause, CancelledError):
                raise asyncio.CancelledError from err
            return AgentToolOutcome(ok=False, error=f"the tool failed: {err.cause or err}", **common)
