"""Tools written in Python, by the name a bot's `agent.tools` gives them (`function`, else the tool's name).

Each takes the call's context (the bot, and the call's idempotency key: the same on every attempt of the
call) and its arguments, already checked against the tool's schema, and returns what the model is shown
(JSON-serialisable). An expected failure (an unknown order) raises `ToolFailed`: the model is told.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dialogue import tools
from dialogue.bot import BotDefinition


class ToolFailed(Exception):
    """What the tool could not do, for the model to read (not retried)."""


@dataclass(frozen=True)
class CallContext:
    bot: BotDefinition
    idempotency_key: str


PythonTool = Callable[[CallContext, dict[str, Any]], Any]


def order_status(context: CallContext, arguments: dict[str, Any]) -> dict[str, Any]:
    """The order's status, carrier, tracking number and expected delivery."""
    result = tools.order_status(context.bot, arguments)
    if not result.ok:
        raise ToolFailed(f"no order {arguments.get('order_id')!r}")
    return result.data


PYTHON_TOOLS: dict[str, PythonTool] = {"order_status": order_status}
