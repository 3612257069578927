"""Tools written in Python, by the name a bot's `agent.tools` gives them (`function`, else the tool's name).

Each takes the call's context (the bot, and the call's idempotency key: the same on every attempt of the
call) and its arguments, already checked against the tool's schema, and returns what the model is shown
(JSON-serialisable). An expected failure (an unknown order) raises `ToolFailed`: the model is told.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dialogue import tools
from dialogue.agent.shop import Shop
from dialogue.bot import BotDefinition


class ToolFailed(Exception):
    """What the tool could not do, for the model to read (not retried)."""


@dataclass(frozen=True)
class CallContext:
    bot: BotDefinition
    idempotency_key: str
    data_dir: Path
    """Where tools that keep state keep it (the demo's shop)."""


PythonTool = Callable[[CallContext, dict[str, Any]], Any]


def order_status(context: CallContext, arguments: dict[str, Any]) -> dict[str, Any]:
    """The order's status, carrier, tracking number and expected delivery."""
    result = tools.order_status(context.bot, arguments)
    if not result.ok:
        raise ToolFailed(f"no order {arguments.get('order_id')!r}")
    return result.data


def _known_order(context: CallContext, order_id: str) -> dict[str, Any]:
    result = tools.order_status(context.bot, {"order_id": order_id})
    if not result.ok:
        raise ToolFailed(f"no order {order_id!r}")
    return result.data


def start_return(context: CallContext, arguments: dict[str, Any]) -> dict[str, Any]:
    """Open a return for a delivered order; once per call, however often the call is retried."""
    order = _known_order(context, arguments["order_id"])
    if order.get("status") != "delivered":
        raise ToolFailed(
            f"order {order['order_id']} is {order.get('status')}: only delivered orders can be returned"
        )
    done = Shop(context.data_dir).act(
        "return", context.idempotency_key, order["order_id"], arguments.get("reason", "")
    )
    return {"return_id": done["reference"], "order_id": done["order_id"], "label": "sent by email"}


def change_address(context: CallContext, arguments: dict[str, Any]) -> dict[str, Any]:
    """Change where an order not yet shipped is delivered; once per call."""
    order = _known_order(context, arguments["order_id"])
    if order.get("status") not in ("processing", "packed"):
        raise ToolFailed(
            f"order {order['order_id']} is {order.get('status')}: its address can no longer change"
        )
    done = Shop(context.data_dir).act(
        "address", context.idempotency_key, order["order_id"], arguments["address"]
    )
    return {"change_id": done["reference"], "order_id": done["order_id"], "address": done["detail"]}


PYTHON_TOOLS: dict[str, PythonTool] = {
    "order_status": order_status,
    "start_return": start_return,
    "change_address": change_address,
}
