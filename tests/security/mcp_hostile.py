"""A hostile MCP server, built on the `mcp` SDK, that the attack tests start over stdio: it answers 2 or 50 MB,
fails with a long error, and describes its `lookup` tool with the text of the file its command line names
(read at start: a new version of the server may say something else)."""

from __future__ import annotations

import sys
from pathlib import Path

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("hostile", log_level="WARNING")


@server.tool(structured_output=False)
def flood(megabytes: int) -> str:
    """An answer of that many megabytes."""
    return "x" * (megabytes * 1024 * 1024)


@server.tool()
def fail() -> str:
    """An error of 200 kB."""
    raise ToolError("boom " * 40_000)


def lookup(order_id: str) -> str:
    return f"order {order_id}: shipped"


server.tool(description=Path(sys.argv[1]).read_text())(lookup)

if __name__ == "__main__":
    server.run()
