"""`agent_step` and `call_tool`: the two activities of the agent's loop (the loop is the workflow's).

`agent_step` sends the model the conversation (read from the store, as for an answer), the turn's message
and the turn's earlier steps with their tools' results, and gets back an answer or the calls it asks for,
each checked against the bot's declarations. `call_tool` runs one call.
"""

from __future__ import annotations

import asyncio
import functools
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from opentelemetry import trace
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from temporalio import activity
from temporalio.exceptions import ApplicationError, CancelledError

from activities.context import read_conversation
from activities.progress import Progress
from dialogue.brain.agent.declarations import (
    Shown,
    arguments_digest,
    call_id,
    checked_call,
    offered,
    openai_tools,
    passages_message,
    shown,
    step_messages,
)
from dialogue.brain.agent.http_tools import call_http
from dialogue.brain.agent.mcp_tools import McpClients
from dialogue.brain.generation import Generators
from dialogue.brain.generation.model_client import ModelClient, RequestedCall
from dialogue.brain.generation.prompts import Prompt, prompt_by_ref
from dialogue.brain.llm.context import Context
from dialogue.brain.python_tools import CallContext, ToolFailed, agent_tools
from dialogue.model.contracts import (
    AgentStep,
    AgentStepRequest,
    AgentToolCall,
    AgentToolOutcome,
    McpToolList,
    ModelCall,
    OfferedTool,
    Reply,
)
from dialogue.platform import events, memory, store
from dialogue.platform.bot import BotDefinition
from dialogue.platform.db import ToolResult
from dialogue.platform.metrics import TOOL_CALLS, TOOL_SECONDS
from dialogue.security.privacy.privacy_policy import PrivacyPolicy

NO_MODEL = "AgentWithoutModel"
TOOL_MISSING = "ToolMissing"
LAST_WORD = (
    "You cannot call tools any more in this turn. Answer the customer now with what the tool results "
    "above say, and say plainly what you could not do."
)


class AgentActivity:
    def __init__(self, bot: BotDefinition, engine: Engine, generators: Generators, data_dir: Path) -> None:
        self._bot = bot
        self._data_dir = data_dir
        self._mcp = McpClients(bot, engine)
        self._engine = engine
        self._generators = generators
        self._privacy = PrivacyPolicy(bot.privacy)
        self._redact = self._privacy.for_llm
        self._functions = agent_tools(bot)  # raises at the worker's start when a declared tool has none

    @activity.defn(name="agent_step")
    async def agent_step(self, request: AgentStepRequest) -> AgentStep:
        """The model's answer, or the tool calls it asks for (each checked against its declaration)."""
        model = self._generators.model(request.variant)
        if model is None:
            raise ApplicationError(
                "an agent turn needs an LLM: set DIALOGUE_GENERATOR=openai (and its endpoint)",
                type=NO_MODEL,
                non_retryable=True,
            )
        settings = self._bot.agent
        tools = offered(settings, request.mcp_tools)
        made = sum(len(step.calls) for step in request.steps)
        last = len(request.steps) + 1 >= settings.max_steps or made >= settings.max_tool_calls
        prompt = prompt_by_ref(settings.prompt)
        context, messages = await self._messages(model, prompt, request, last)
        started = time.monotonic()
        async with Progress(self._engine, request.stream) as progress:
            completion = await model.chat(
                messages,
                tools=None if last else openai_tools(tools),
                on_token=progress.token,
            )
            tokens = {
                "prompt_tokens": completion.prompt_tokens,
                "completion_tokens": completion.completion_tokens,
            }
            model_call = ModelCall(
                model=model.name,
                prompt_id=prompt.id,
                prompt_hash=prompt.hash,
                duration_ms=round((time.monotonic() - started) * 1000, 1),
                attempt=activity.info().attempt,
                **tokens,
            )
            if not completion.tool_calls or last:
                reply = Reply(
                    text=completion.text.strip(),
                    generator=model.name,
                    prompt_id=prompt.id,
                    prompt_hash=prompt.hash,
                    context=context.lineage.model_copy(update=tokens),
                )
                return AgentStep(
                    reply=reply, limit_reached=last and bool(request.steps), model_call=model_call, **tokens
                )
            calls = self._checked(request, tools, completion.tool_calls, made)
            _announce(progress, calls)
        return AgentStep(calls=calls, text=completion.text, model_call=model_call, **tokens)

    async def _messages(
        self, model: ModelClient, prompt: Prompt, request: AgentStepRequest, last: bool
    ) -> tuple[Context, list[dict[str, Any]]]:
        """What the model is sent: the conversation within its budget, the passages, the steps so far, and
        at the last step the word that it must answer now."""
        conversation = await asyncio.to_thread(read_conversation, self._engine, request.context)
        context = model.assemble(
            system=prompt.render(bot_description=self._bot.description or "an online shop."),
            current=request.text,
            conversation=conversation,
            redact=self._redact if request.redact else str,
        )
        documents = passages_message(
            [p.model_copy(update={"text": self._redact(p.text)}) for p in request.passages]
            if request.redact
            else request.passages
        )
        messages: list[dict[str, Any]] = [
            *context.messages,
            *documents,
            *step_messages(request.steps, redact=self._redact if request.redact else str),
        ]
        if last:
            messages.append({"role": "system", "content": LAST_WORD})
        return context, messages

    def _checked(
        self,
        request: AgentStepRequest,
        tools: list[OfferedTool],
        requested: list[RequestedCall],
        made: int,
    ) -> list[AgentToolCall]:
        """The calls the model asked for, checked against the declarations; past the turn's limit, not made."""
        settings = self._bot.agent
        calls = [
            checked_call(
                tools,
                call_id=call_id(request.turn_id, len(request.steps), n),
                name=call.name,
                arguments_json=call.arguments,
                conversation_id=request.context.conversation_id,
                turn_id=request.turn_id,
                approval_timeout_seconds=settings.approval_timeout_seconds,
            ).model_copy(update={"stream": request.stream, "redact": request.redact})
            for n, call in enumerate(requested)
        ]
        room = settings.max_tool_calls - made
        for n, call in enumerate(calls[room:], start=room):
            calls[n] = call.model_copy(update={"invalid": "over the turn's limit of tool calls"})
        return calls

    @activity.defn(name="call_tool")
    def call_tool(self, call: AgentToolCall) -> AgentToolOutcome:
        """Run one call of a Python or HTTP tool; a failure the tool expects (`ToolFailed`) is its result, for
        the model. Any other error fails the attempt, and Temporal retries it up to the tool's attempts."""
        spec = self._bot.agent.tool(call.name)
        if spec is None:
            raise ApplicationError(
                f"no tool {call.name!r} in this worker", type=TOOL_MISSING, non_retryable=True
            )
        started = time.monotonic()
        try:
            if spec.kind == "memory":
                result = self._memory_tool(call)
            elif spec.kind == "http":
                assert spec.http is not None  # the bot's validation made sure
                result = call_http(
                    spec.http,
                    call.arguments,
                    call.idempotency_key,
                    spec.timeout_seconds,
                    declared=set(spec.parameters.get("properties", {})),
                    user=call.user,
                )
            else:
                function = self._functions[spec.function or spec.name]  # checked at the worker's start
                context = CallContext(self._bot, call.idempotency_key, self._data_dir, call.user)
                result = function(context, call.arguments)
        except ToolFailed as failed:
            return self._outcome(call, started, failed=str(failed))
        except CancelledError:
            _count(call, started, "error")
            raise
        except Exception as err:
            _count(call, started, "error")
            raise self._redacted(call, err) from None
        return self._outcome(call, started, result=result)

    def _memory_tool(self, call: AgentToolCall) -> dict[str, Any]:
        """`remember` and `forget`, for the conversation's verified end user alone (never one the model
        names), and only while they consent; what the model asks to keep is redacted as a turn's text."""
        if call.user is None:
            raise ToolFailed("this conversation has no signed-in customer: there is no one to remember")
        tenant = memory.tenant_of(call.conversation_id)
        kind = str(call.arguments.get("kind") or "")
        if call.name == "forget":
            forgotten = memory.forget(
                self._engine, tenant=tenant, user=call.user, kinds=[kind] if kind else []
            )
            return {"forgotten": forgotten}
        value = self._privacy.for_storage(str(call.arguments["value"]), enabled=call.redact)
        now = datetime.now(UTC)
        days = self._bot.privacy.retention_days
        kept = memory.remember(
            self._engine,
            tenant=tenant,
            user=call.user,
            kind=kind,
            value=value,
            source="model",
            at=now,
            conversation_id=call.conversation_id,
            expires_at=now + timedelta(days=days) if days is not None else None,
        )
        if kept is None:
            raise ToolFailed("the customer has not agreed to be remembered: nothing was kept")
        return {"remembered": kind, "value": kept.value}

    @activity.defn(name="call_mcp_tool")
    async def call_mcp_tool(self, call: AgentToolCall) -> AgentToolOutcome:
        """Run one call of a tool an MCP server offers, the idempotency key in the request's `_meta`."""
        server = next((s for s in self._bot.agent.mcp_servers if s.name == call.server), None)
        if server is None or not server.allows(call.name):
            raise ApplicationError(
                f"no MCP tool {call.name!r} allowed in this worker", type=TOOL_MISSING, non_retryable=True
            )
        started = time.monotonic()
        try:
            result = await self._mcp.call(
                server, call.name, call.arguments, call.idempotency_key, user=call.user
            )
        except ToolFailed as failed:
            return self._outcome(call, started, failed=str(failed))
        except CancelledError:
            _count(call, started, "error")
            raise
        except Exception as err:
            _count(call, started, "error")
            raise self._redacted(call, err) from None
        return self._outcome(call, started, result=result)

    @activity.defn(name="list_mcp_tools")
    async def list_mcp_tools(self) -> McpToolList:
        """The allowed tools of the bot's MCP servers, from this worker's cache while it is fresh."""
        return await self._mcp.list_tools(self._bot.agent.mcp_servers)

    def _outcome(
        self, call: AgentToolCall, started: float, *, result: Any = None, failed: str | None = None
    ) -> AgentToolOutcome:
        """What the call gave, in the tool's metrics, its span and (streamed turns) the event log."""
        seconds = _count(call, started, "failed" if failed is not None else "ok")
        common = {
            "call_id": call.call_id,
            "name": call.name,
            "arguments_sha256": arguments_digest(call.arguments),
            "attempt": activity.info().attempt,
            "duration_ms": round(seconds * 1000, 1),
        }
        # What the tool said reaches lineage, the client, the history and the logs: as the policy keeps it.
        redact = functools.partial(self._privacy.for_storage, enabled=call.redact)
        if failed is not None:
            outcome = AgentToolOutcome(ok=False, error=redact(failed), **common)
        else:
            seen = shown(result, self._bot.agent.max_result_chars, redact=redact)
            outcome = AgentToolOutcome(
                ok=True,
                content=seen.content,
                size=seen.size,
                sha256=seen.sha256,
                stored=seen.cut and self._keep(call, seen),
                **common,
            )
        span = trace.get_current_span()  # the activity's span, under the turn's trace
        span.set_attribute("dialogue.tool", call.name)
        span.set_attribute("dialogue.tool.ok", outcome.ok)
        span.set_attribute("dialogue.tool.result_bytes", outcome.size)
        if call.stream is not None:
            self._tell(call, outcome)
        return outcome

    def _keep(self, call: AgentToolCall, seen: Shown) -> bool:
        """Keep the whole of a result the model saw cut (not in Temporal's history: in the store), redacted as
        the transcript is. A store that cannot take it costs the link, not the call: its effect happened."""
        row = ToolResult(
            conversation_id=call.conversation_id,
            call_id=call.call_id,
            name=call.name,
            size=seen.size,
            sha256=seen.sha256,
            content=seen.whole,  # redacted as `shown` was told
            created_at=datetime.now(UTC),
        )
        try:
            store.keep_tool_result(self._engine, row)
        except SQLAlchemyError as err:
            activity.logger.warning(
                "the whole result of %s was not kept: %s", call.call_id, err.__class__.__name__
            )
            return False
        return True

    def _redacted(self, call: AgentToolCall, err: Exception) -> ApplicationError:
        """A failed attempt's error as it leaves the activity, for the history, the worker's log and (after
        the last attempt) the model: its message redacted (an HTTP tool's path, a service's words can hold
        personal data), its type kept for the retry policy, its cause left behind (the traceback would
        repeat the message whole)."""
        message = self._privacy.for_llm(str(err), enabled=call.redact)
        if isinstance(err, ApplicationError):
            return ApplicationError(
                message, type=err.type, non_retryable=err.non_retryable, next_retry_delay=err.next_retry_delay
            )
        return ApplicationError(message, type=err.__class__.__name__)

    def _tell(self, call: AgentToolCall, outcome: AgentToolOutcome) -> None:
        """A streamed turn's `tool_result` event: what came back, not the whole result (lineage has its size)."""
        assert call.stream is not None
        data = {
            "call_id": outcome.call_id,
            "name": outcome.name,
            "ok": outcome.ok,
            "size": outcome.size,
            "error": outcome.error,
        }
        try:
            events.append(
                self._engine,
                call.stream.conversation_id,
                [events.NewEvent("tool_result", data, call.stream.turn_id)],
            )
        except SQLAlchemyError as err:  # the stream is a courtesy: the result goes to the model all the same
            activity.logger.warning("event log unavailable: %s", err.__class__.__name__)


def _count(call: AgentToolCall, started: float, outcome: str) -> float:
    """The attempt in the tool's metrics; its duration in seconds."""
    seconds = time.monotonic() - started
    TOOL_CALLS.labels(call.name, outcome).inc()
    TOOL_SECONDS.labels(call.name).observe(seconds)
    return seconds


def _announce(progress: Progress, calls: list[AgentToolCall]) -> None:
    """A streamed turn shows each call the model asked for, and those that wait for a person's approval."""
    for call in calls:
        shown = {"call_id": call.call_id, "name": call.name, "arguments": call.arguments}
        progress.add("tool_call", shown | {"invalid": call.invalid})
        if call.approval is not None and call.invalid is None:
            progress.add("approval_required", shown | {"approval": call.approval})
