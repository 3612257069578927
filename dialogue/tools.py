"""Tools a flow calls once its slots are filled: plain functions over the bot's data, run by the
`run_tool` activity. The demo's `order_status` reads the bot's `orders` table (a JSON file)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from dialogue.bot import BotDefinition
from dialogue.contracts import ToolCall, ToolResult

Tool = Callable[[BotDefinition, dict[str, Any]], ToolResult]


def order_status(bot: BotDefinition, arguments: dict[str, Any]) -> ToolResult:
    """Status, carrier and estimated delivery of an order, by its id."""
    table = bot.tables.get("orders")
    if table is None:
        raise LookupError("the bot declares no `orders` table")
    orders = orjson.loads(bot.resolve(table).read_bytes())
    wanted = str(arguments.get("order_id", "")).upper()
    order = next((o for o in orders if str(o.get("order_id", "")).upper() == wanted), None)
    if order is None:
        return ToolResult(ok=False, data={"order_id": wanted}, retry_slot="order_id")
    details = {
        "shipped": f"It's with {order.get('carrier')} (tracking {order.get('tracking_number')}), expected on {order.get('estimated_delivery')}.",
        "delivered": f"It was delivered by {order.get('carrier')}.",
        "processing": f"We expect to deliver it around {order.get('estimated_delivery')}.",
        "packed": f"It leaves our warehouse shortly; expected on {order.get('estimated_delivery')}.",
        "cancelled": "No payment was taken, or it has been refunded.",
    }.get(str(order.get("status")), "")
    return ToolResult(
        ok=True, data={**order, "details": details, "items": ", ".join(order.get("items") or [])}
    )


TOOLS: dict[str, Tool] = {"order_status": order_status}


def run(bot: BotDefinition, call: ToolCall) -> ToolResult:
    tool = TOOLS.get(call.name)
    if tool is None:
        raise LookupError(f"no tool named {call.name!r}")
    return tool(bot, call.arguments)
