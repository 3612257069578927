"""`agent_step` and `call_tool`: the two activities of the agent's loop (the loop is the workflow's).

`agent_step` sends the model the conversation (read from the store, as for an answer), the turn's message
and the turn's earlier steps with their tools' results, and gets back an answer or the calls it asks for,
each checked against the bot's declarations. `call_tool` runs one call.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.context import read_conversation
from activities.progress import Progress
from dialogue import events
from dialogue.agent.python_tools import PYTHON_TOOLS, CallContext, ToolFailed
from dialogue.agent.tools import arguments_digest, checked_call, openai_tools, shown, step_messages
from dialogue.bot import BotDefinition
from dialogue.generation import Generators
from dialogue.generation.openai_chat import OpenAIChatGenerator, RequestedCall
from dialogue.generation.prompts import prompt_by_ref
from dialogue.llm.context import assemble
from dialogue.privacy.policy import PrivacyPolicy
from workflows.contracts import AgentStep, AgentStepRequest, AgentToolCall, AgentToolOutcome, Reply

NO_MODEL = "AgentWithoutModel"
LAST_WORD = (
    "You cannot call tools any more in this turn. Answer the customer now with what the tool results "
    "above say, and say plainly what you could not do."
)


class AgentActivity:
    def __init__(self, bot: BotDefinition, engine: Engine, generators: Generators) -> None:
        self._bot = bot
        self._engine = engine
        self._generators = generators
        self._redact = PrivacyPolicy(bot.privacy).for_llm

    @activity.defn(name="agent_step")
    async def agent_step(self, request: AgentStepRequest) -> AgentStep:
        """The model's answer, or the tool calls it asks for (each checked against its declaration)."""
        generator = self._generators.model(request.variant)
        if not isinstance(generator, OpenAIChatGenerator):
            raise ApplicationError(
                "an agent turn needs an LLM: set DIALOGUE_GENERATOR=openai (and its endpoint)",
                type=NO_MODEL,
                non_retryable=True,
            )
        settings = self._bot.agent
        made = sum(len(step.calls) for step in request.steps)
        last = len(request.steps) + 1 >= settings.max_steps or made >= settings.max_tool_calls
        prompt = prompt_by_ref(settings.prompt)
        conversation = await asyncio.to_thread(read_conversation, self._engine, request.context)
        context = assemble(
            system=prompt.render(bot_description=self._bot.description or "an online shop."),
            current=request.text,
            earlier=conversation.earlier,
            summary=conversation.summary,
            budget=generator.settings.context_tokens,
            counter=generator.client.counter,
            redact=self._redact if request.redact else str,
            expected=conversation.expected,
            unread_before=conversation.unread_before,
            notes=conversation.notes,
        )
        messages: list[dict[str, Any]] = [*context.messages, *step_messages(request.steps)]
        if last:
            messages.append({"role": "system", "content": LAST_WORD})
        async with Progress(self._engine, request.stream) as progress:
            completion = await generator.client.complete(
                messages,
                max_tokens=generator.settings.max_tokens,
                temperature=generator.settings.temperature,
                tools=None if last else openai_tools(settings),
                on_token=progress.token,
            )
            tokens = {
                "prompt_tokens": completion.prompt_tokens,
                "completion_tokens": completion.completion_tokens,
            }
            if not completion.tool_calls or last:
                reply = Reply(
                    text=completion.text.strip(),
                    generator=generator.name,
                    prompt_id=prompt.id,
                    prompt_hash=prompt.hash,
                    context=context.lineage.model_copy(update=tokens),
                )
                return AgentStep(reply=reply, limit_reached=last and bool(request.steps), **tokens)
            calls = self._checked(request, completion.tool_calls, made)
            for call in calls:
                progress.add(
                    "tool_call",
                    {
                        "call_id": call.call_id,
                        "name": call.name,
                        "arguments": call.arguments,
                        "invalid": call.invalid,
                    },
                )
        return AgentStep(calls=calls, text=completion.text, **tokens)

    def _checked(
        self, request: AgentStepRequest, requested: list[RequestedCall], made: int
    ) -> list[AgentToolCall]:
        """The calls the model asked for, checked against the declarations; past the turn's limit, not made."""
        settings = self._bot.agent
        key = f"{request.context.conversation_id}:{request.turn_id}"
        calls = [
            checked_call(
                settings,
                call_id=call.id or f"call-{len(request.steps)}-{n}",
                name=call.name,
                arguments_json=call.arguments,
                key=key,
            ).model_copy(update={"stream": request.stream})
            for n, call in enumerate(requested)
        ]
        room = settings.max_tool_calls - made
        for n, call in enumerate(calls[room:], start=room):
            calls[n] = call.model_copy(update={"invalid": "over the turn's limit of tool calls"})
        return calls

    @activity.defn(name="call_tool")
    def call_tool(self, call: AgentToolCall) -> AgentToolOutcome:
        """Run one tool call; a failure the tool expects (`ToolFailed`) is its result, for the model."""
        spec = self._bot.agent.tool(call.name)
        function = PYTHON_TOOLS.get((spec.function or spec.name) if spec else "")
        if spec is None or function is None:
            raise ApplicationError(
                f"no tool {call.name!r} in this worker", type="ToolMissing", non_retryable=True
            )
        common = {
            "call_id": call.call_id,
            "name": call.name,
            "arguments_sha256": arguments_digest(call.arguments),
        }
        try:
            result = function(CallContext(self._bot, call.idempotency_key), call.arguments)
        except ToolFailed as failed:
            outcome = AgentToolOutcome(ok=False, error=str(failed), **common)
        else:
            content, size, digest = shown(result, self._bot.agent.max_result_chars)
            outcome = AgentToolOutcome(ok=True, content=content, size=size, sha256=digest, **common)
        if call.stream is not None:
            self._tell(call, outcome)
        return outcome

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
