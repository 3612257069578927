"""The Northwind stores' MCP server: opening hours of the shops and stock by product, built on the `mcp`
SDK. The demo bot's worker starts it over stdio (`agent.mcp_servers` in bot.yaml); it also serves over
streamable HTTP:

    python examples/demo/mcp_store.py                       # stdio
    python examples/demo/mcp_store.py http 127.0.0.1 8765   # http://127.0.0.1:8765/mcp

It only reads, so the idempotency key each call carries in its `_meta` is merely echoed back: a tool
that acts would do its effect once per key. So is the conversation's end user (`end_user` in `_meta`, when
it has one), whom a tool that reads a customer's data would serve alone.
"""

from __future__ import annotations

import sys
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

STORES = {
    "berlin": {
        "address": "Friedrichstr. 68, 10117 Berlin",
        "hours": "Mon-Sat 10:00-20:00",
        "sunday": "closed",
    },
    "hamburg": {
        "address": "Spitalerstr. 12, 20095 Hamburg",
        "hours": "Mon-Sat 10:00-19:00",
        "sunday": "closed",
    },
    "munich": {
        "address": "Kaufingerstr. 9, 80331 Munich",
        "hours": "Mon-Sat 09:30-20:00",
        "sunday": "closed",
    },
}
STOCK = {
    "northwind pro wireless headphones": {"berlin": 14, "hamburg": 3, "munich": 0, "online": 120},
    "northwind boom portable speaker": {"berlin": 0, "hamburg": 6, "munich": 9, "online": 45},
    "northwind active smartwatch": {"berlin": 7, "hamburg": 2, "munich": 5, "online": 0},
}

server = MCPServer("northwind-stores", log_level="WARNING")  # its logs go to stderr: stdout is the protocol


def _meta(context: Context, name: str) -> str | None:
    """What the caller put under `name` in the request's `_meta` (an open map)."""
    meta = context.request_context.meta
    if meta is None:
        return None
    found = meta.get(name) if isinstance(meta, dict) else getattr(meta, name, None)
    return str(found) if found is not None else None


@server.tool()
def opening_hours(store: str, context: Context) -> dict[str, Any]:
    """Opening hours and address of a Northwind store: berlin, hamburg or munich."""
    found = STORES.get(store.strip().lower())
    if found is None:
        raise ToolError(f"no store in {store!r}; the stores are in {', '.join(sorted(STORES))}")
    return {
        "store": store.strip().lower(),
        **found,
        "idempotency_key": _meta(context, "idempotency_key"),
        "end_user": _meta(context, "end_user"),
    }


@server.tool()
def stock(product: str) -> dict[str, Any]:
    """How many of a product each store has, and the online warehouse."""
    wanted = product.strip().lower()
    found = next((name for name in STOCK if wanted in name), None)
    if found is None:
        raise ToolError(f"no product like {product!r}")
    return {"product": found, "stock": STOCK[found]}


if __name__ == "__main__":
    if sys.argv[1:2] == ["http"]:
        host, port = (sys.argv[2], int(sys.argv[3])) if len(sys.argv) > 3 else ("127.0.0.1", 8765)
        server.run("streamable-http", host=host, port=port)
    else:
        server.run()
