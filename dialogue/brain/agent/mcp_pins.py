"""MCP tools pinned on first sight: what the model is told of a server's tool (its name, description and
input schema) is the server's to write, and a server that changes it later (a new owner, a compromised
package, a "rug pull") would speak to the model with the bot's authority. So the first time a bot's
worker lists a tool, its digest is kept in the store (`mcp_tool_pin`, per bot, server and tool); a later
listing whose digest differs leaves the tool out, with a warning in the worker's log and a refusal the
model reads if it calls the tool anyway, unless the bot's declaration of the server consents
(`accept_changes: true`), which pins the new digest.

A tool the server lists for the first time is pinned then (trust on first use, as SSH does with a host
key): the allow-list (`allow`) says which tools may be offered at all.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple

import orjson

from dialogue.model.contracts import OfferedTool

CHANGED = (
    "the MCP server changed this tool's description or schema since it was pinned: it is not offered "
    "until the bot accepts the change (`accept_changes` on the server)"
)


def tool_digest(tool: OfferedTool) -> str:
    """SHA-256 of what the model is told of the tool: its name, description and input schema."""
    told = {"name": tool.name, "description": tool.description, "parameters": tool.parameters}
    return hashlib.sha256(orjson.dumps(told, option=orjson.OPT_SORT_KEYS)).hexdigest()


class Pinned(NamedTuple):
    tools: list[OfferedTool]
    """The listed tools, those that changed unconsented marked `refused`."""
    pins: dict[str, str]
    """Digests to keep: new tools', and changed ones' the bot accepted."""
    changed: list[str]
    """The tools whose digest differs from their pin."""


def check_pins(tools: list[OfferedTool], pins: dict[str, str], *, accept_changes: bool) -> Pinned:
    """Each listed tool against its pin (`pins`: name → digest, from the store)."""
    kept: list[OfferedTool] = []
    new: dict[str, str] = {}
    changed: list[str] = []
    for tool in tools:
        digest = tool_digest(tool)
        pinned = pins.get(tool.name)
        if pinned is None:
            new[tool.name] = digest
        elif pinned != digest:
            changed.append(tool.name)
            if accept_changes:
                new[tool.name] = digest
            else:
                tool = tool.model_copy(update={"refused": CHANGED})
        kept.append(tool)
    return Pinned(kept, new, changed)
