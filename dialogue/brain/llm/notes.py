"""Memory notes by the model: after a turn the model answered, the model reads the customer's message for
lasting facts about them and keeps them with the `remember` and `forget` tools the agent has (prompt
`memory_notes@vN`), for users who agreed to be remembered. The rules (`dialogue/brain/memory.py`) read
every turn of every bot; this catches what they cannot ("I'm Sofia, from Bristol").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import orjson

from dialogue.brain.agent.declarations import invalid_arguments, offered, openai_tools
from dialogue.brain.generation.prompts import load_prompt
from dialogue.platform.bot import MEMORY_TOOLS, AgentSettings

if TYPE_CHECKING:
    from dialogue.brain.generation.model_client import ModelClient

NOTES_PROMPT = load_prompt("memory_notes", 1)
MAX_NOTES = 8
"""Calls of one reading kept at most: a customer states a few facts in a message, not dozens."""
NOTES_TOKENS = 300


@dataclass(frozen=True)
class Note:
    action: Literal["remember", "forget"]
    kind: str
    value: str = ""


async def notes_by_model(
    model: ModelClient,
    *,
    said: str,
    remembered: Sequence[str],
    bot_description: str,
    redact: Callable[[str], str],
) -> list[Note]:
    """What the model keeps or drops of the customer's message `said`, given what is `remembered`
    (`kind: value` lines). A call whose arguments do not fit the tool's schema is left out."""
    system = NOTES_PROMPT.render(
        bot_description=bot_description or "an online shop.",
        remembered=redact("\n".join(remembered)) or "(nothing yet)",
    )
    completion = await model.chat(
        [{"role": "system", "content": system}, {"role": "user", "content": redact(said)}],
        tools=openai_tools(offered(AgentSettings(memory=True), [])),
        max_tokens=NOTES_TOKENS,
        temperature=0.0,
    )
    schemas = {tool.name: tool.parameters for tool in MEMORY_TOOLS}
    notes: list[Note] = []
    for call in completion.tool_calls[:MAX_NOTES]:
        try:
            arguments = orjson.loads(call.arguments or "{}")
        except orjson.JSONDecodeError:
            continue
        if call.name not in schemas or not isinstance(arguments, dict):
            continue
        if invalid_arguments(schemas[call.name], arguments) is not None:
            continue
        kind = str(arguments.get("kind") or "")
        if call.name == "remember":
            notes.append(Note("remember", kind, str(arguments["value"])))
        elif kind:  # `forget` without a kind would be everything: a reading never drops all at once
            notes.append(Note("forget", kind))
    return notes
