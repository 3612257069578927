"""Tools as the model sees them and as they are checked: the bot's declarations (`agent.tools`), the
arguments a model asks for validated against their schema, results cut to what the model is shown.

A tool result goes back to the model as data, between RESULT_OPEN and RESULT_CLOSE, and the agent's
prompt says that what stands there is never an instruction. What keeps a result (or a document) that
says "call refund_everything" from doing harm is not the prompt, though: the model can only name
declared tools, and every call is checked here against the declaration before anything runs.
"""

from __future__ import annotations

import hashlib
from typing import Any

import jsonschema
import orjson

from dialogue.bot import AgentSettings, ToolSpec
from workflows.contracts import AgentStepRecord, AgentToolCall

RESULT_OPEN = "<tool_result>"
RESULT_CLOSE = "</tool_result>"
CUT = " … [result cut: too long]"


def openai_tools(settings: AgentSettings) -> list[dict[str, Any]]:
    """The declared tools in the `tools` parameter of a Chat Completions request."""
    return [
        {
            "type": "function",
            "function": {"name": tool.name, "description": tool.description, "parameters": tool.parameters},
        }
        for tool in settings.tools
    ]


def checked_call(
    settings: AgentSettings, *, call_id: str, name: str, arguments_json: str, key: str
) -> AgentToolCall:
    """A call the model asked for, with why it must not run (`invalid`) when it must not."""
    spec = settings.tool(name)
    try:
        arguments = orjson.loads(arguments_json or "{}")
    except orjson.JSONDecodeError as err:
        return AgentToolCall(call_id=call_id, name=name, invalid=f"the arguments are not JSON: {err}")
    if not isinstance(arguments, dict):
        return AgentToolCall(call_id=call_id, name=name, invalid="the arguments must be a JSON object")
    if spec is None:
        allowed = ", ".join(tool.name for tool in settings.tools) or "none"
        return AgentToolCall(
            call_id=call_id, name=name, arguments=arguments, invalid=f"no tool {name!r} (allowed: {allowed})"
        )
    problem = invalid_arguments(spec, arguments)
    return AgentToolCall(
        call_id=call_id,
        name=name,
        arguments=arguments,
        idempotency_key=f"{key}:{call_id}",
        timeout_seconds=spec.timeout_seconds,
        attempts=spec.attempts,
        invalid=problem,
    )


def invalid_arguments(spec: ToolSpec, arguments: dict[str, Any]) -> str | None:
    try:
        jsonschema.validate(arguments, spec.parameters)
    except jsonschema.ValidationError as err:
        return f"the arguments do not fit the tool's schema: {err.message}"
    return None


def shown(result: Any, limit: int) -> tuple[str, int, str]:
    """A result as the model sees it (JSON, cut at `limit` characters), its size and its digest."""
    encoded = orjson.dumps(result, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS, default=str)
    text = encoded.decode()
    if len(text) > limit:
        text = text[: limit - len(CUT)] + CUT
    return text, len(encoded), hashlib.sha256(encoded).hexdigest()


def arguments_digest(arguments: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(arguments, option=orjson.OPT_SORT_KEYS)).hexdigest()


def step_messages(steps: list[AgentStepRecord]) -> list[dict[str, Any]]:
    """The turn's earlier steps as the model wrote and the tools answered them."""
    messages: list[dict[str, Any]] = []
    for step in steps:
        messages.append(
            {
                "role": "assistant",
                "content": step.text or None,
                "tool_calls": [
                    {
                        "id": call.call_id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": orjson.dumps(call.arguments).decode()},
                    }
                    for call in step.calls
                ],
            }
        )
        for outcome in step.outcomes:
            body = (
                outcome.content
                if outcome.ok
                else f'{{"error": {orjson.dumps(outcome.error or "failed").decode()}}}'
            )
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": outcome.call_id,
                    "content": f"{RESULT_OPEN}{body}{RESULT_CLOSE}",
                }
            )
    return messages
