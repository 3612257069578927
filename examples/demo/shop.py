"""The demo's shop, and the Python tools the bot calls on it (named in bot.yaml: `python_tools: shop.py`).

The shop's order system: the orders, a table of the bot (`tables.orders`, orders.json), and the returns and
delivery-address changes made, kept in a SQLite file of their own (`data_dir/northwind-shop.sqlite`), as a
real shop's order system would be another service than the chatbot's store. Each action is keyed by the
tool call's idempotency key: a call retried after a worker died in the middle presents the same key and
gets the first call's result back, so the effect happens once.

The tools: `order_status` for the order-lookup flow, and `order_status`, `start_return` and
`change_address` for the agent, registered on `tools` (dialogue/brain/python_tools.py says how).

Each order belongs to a customer (`customer` in orders.json). When the conversation has a verified end user
(`context.user`: their end-user token), a tool finds only that customer's orders: another customer's order
is answered exactly as one that does not exist, so a user cannot even learn that a number is taken. Without
an end user, the integrator's server speaks for its tenant and every order is found (the conversation
tests, an operator's console).
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import time
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from dialogue.brain.python_tools import CallContext, PythonTools, ToolFailed
from dialogue.model.contracts import ToolResult

SHOP_FILE = "northwind-shop.sqlite"
LATENCY_VARIABLE = "NORTHWIND_SHOP_LATENCY_SECONDS"
"""How long the shop takes to answer after it acted (default none): a real service's round trip, during
which the worker that called it can die. The fault tests set it to kill a worker at that moment."""
_SCHEMA = """
CREATE TABLE IF NOT EXISTS shop_action (
    idempotency_key TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    order_id TEXT NOT NULL,
    reference TEXT NOT NULL,
    detail TEXT NOT NULL,
    created_at TEXT NOT NULL
)
"""

tools = PythonTools()
DEMO_CUSTOMER = "NWC-100001"
"""The customer who owns the orders the README and the guides ask about (NW-482913, NW-105733, NW-654321,
NW-300218)."""


class Shop:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / SHOP_FILE

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, timeout=10)
        connection.execute(_SCHEMA)
        return connection

    def act(self, kind: str, idempotency_key: str, order_id: str, detail: str) -> dict[str, Any]:
        """Do the action once per key; the same key again returns what the first call did."""
        reference = f"{kind[:2].upper()}-{secrets.token_hex(4).upper()}"
        with closing(self._connect()) as connection, connection:
            connection.execute(
                "INSERT OR IGNORE INTO shop_action VALUES (?, ?, ?, ?, ?, ?)",
                (idempotency_key, kind, order_id, reference, detail, datetime.now(UTC).isoformat()),
            )
            row = connection.execute(
                "SELECT kind, order_id, reference, detail, created_at FROM shop_action WHERE idempotency_key = ?",
                (idempotency_key,),
            ).fetchone()
        time.sleep(float(os.environ.get(LATENCY_VARIABLE, "0")))
        kind, order_id, reference, detail, created_at = row
        return {
            "kind": kind,
            "order_id": order_id,
            "reference": reference,
            "detail": detail,
            "at": created_at,
        }

    def actions(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Every action done, oldest first (what the tests count)."""
        if not self.path.exists():
            return []
        with closing(self._connect()) as connection:
            rows = connection.execute(
                "SELECT idempotency_key, kind, order_id, reference, detail FROM shop_action "
                "WHERE ? IS NULL OR kind = ? ORDER BY created_at",
                (kind, kind),
            ).fetchall()
        return [
            dict(zip(("idempotency_key", "kind", "order_id", "reference", "detail"), r, strict=True))
            for r in rows
        ]


@tools.flow_tool("order_status")
def look_up_order(context: CallContext, arguments: dict[str, Any]) -> ToolResult:
    """Status, carrier and estimated delivery of an order, by its id, from the bot's `orders` table: of the
    conversation's end user only, when it has one."""
    bot = context.bot
    table = bot.tables.get("orders")
    if table is None:
        raise LookupError("the bot declares no `orders` table")
    orders = orjson.loads(bot.resolve(table).read_bytes())
    wanted = str(arguments.get("order_id", "")).upper()
    order = next((o for o in orders if str(o.get("order_id", "")).upper() == wanted), None)
    if order is not None and context.user is not None and order.get("customer") != context.user:
        order = None  # another customer's: as if there were no such order
    if order is None:
        return ToolResult(ok=False, data={"order_id": wanted}, retry_slot="order_id")
    order = {name: value for name, value in order.items() if name != "customer"}
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


@tools.agent_tool()
def order_status(context: CallContext, arguments: dict[str, Any]) -> dict[str, Any]:
    """The order's status, carrier, tracking number and expected delivery."""
    result = look_up_order(context, arguments)
    if not result.ok:
        raise ToolFailed(f"no order {arguments.get('order_id')!r}")
    return result.data


def _known_order(context: CallContext, order_id: str) -> dict[str, Any]:
    result = look_up_order(context, {"order_id": order_id})
    if not result.ok:
        raise ToolFailed(f"no order {order_id!r}")
    return result.data


@tools.agent_tool()
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


@tools.agent_tool()
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
