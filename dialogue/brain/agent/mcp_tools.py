"""The agent's MCP servers, through the official `mcp` SDK: each server's session is opened once per
worker and kept (a stdio server costs about half a second to start, a call on an open session about a
millisecond), its tool list cached for the server's `list_seconds`.

A session is owned by one task: the SDK's transports are anyio task groups, which must be closed by the
task that opened them. A session whose server died (the SDK's "connection closed") is dropped, and the
call fails its attempt: Temporal retries it, and the retry opens a new session. The call's idempotency
key goes in the request's `_meta` (`idempotency_key`), for servers whose tools act.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import httpx2
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import RequestParamsMeta

from dialogue.brain.agent.http_tools import ToolUnavailable, expand_variables
from dialogue.brain.python_tools import ToolFailed
from dialogue.model.contracts import McpToolList, OfferedTool
from dialogue.platform.bot import BotDefinition, McpServer

log = logging.getLogger("dialogue.brain.agent.mcp")

CONNECTION_CLOSED = -32000
OPEN_TIMEOUT_SECONDS = 20.0
_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


class _Session:
    """One server's session, opened by an owner task that keeps it until `close`."""

    def __init__(self, server: McpServer, bot_dir: Path) -> None:
        self._server = server
        self._bot_dir = bot_dir
        self._ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._session: ClientSession | None = None
        self._error: BaseException | None = None
        self._owner = asyncio.ensure_future(self._own())

    async def get(self) -> ClientSession:
        await asyncio.wait_for(self._ready.wait(), timeout=OPEN_TIMEOUT_SECONDS)
        if self._session is None:
            raise ToolUnavailable(f"MCP server {self._server.name} did not start: {_reason(self._error)}")
        return self._session

    @property
    def alive(self) -> bool:
        return not self._owner.done()

    async def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._owner, timeout=5)

    async def _own(self) -> None:
        try:
            async with self._open() as session:
                await session.initialize()
                self._session = session
                self._ready.set()
                await self._stop.wait()
        except BaseException as err:
            self._error = err
            if not isinstance(err, Exception):
                raise
        finally:
            self._session = None
            self._ready.set()

    @asynccontextmanager
    async def _open(self) -> AsyncIterator[ClientSession]:
        server = self._server
        if server.command is not None:
            command = [
                part.replace("{python}", sys.executable).replace("{bot_dir}", str(self._bot_dir))
                for part in server.command
            ]
            parameters = StdioServerParameters(command=command[0], args=command[1:])
            async with stdio_client(parameters) as (read, write), ClientSession(read, write) as session:
                yield session
            return
        assert server.url is not None  # the bot's validation made sure
        headers = {name: expand_variables(value) for name, value in server.headers.items()}
        async with (
            httpx2.AsyncClient(headers=headers, timeout=server.timeout_seconds) as http,
            streamable_http_client(server.url, http_client=http) as (read, write),
            ClientSession(read, write) as session,
        ):
            yield session


class McpClients:
    """A worker's sessions with the bot's MCP servers and their cached tool lists."""

    def __init__(self, bot: BotDefinition) -> None:
        self._bot_dir = bot.path.parent if bot.path else Path.cwd()
        self._sessions: dict[str, _Session] = {}
        self._listed: dict[str, tuple[float, list[OfferedTool]]] = {}

    async def list_tools(self, servers: list[McpServer]) -> McpToolList:
        """The allowed tools of every server; a server that cannot be listed is left out, with why."""
        listing = McpToolList()
        for server in servers:
            cached = self._listed.get(server.name)
            if cached is not None and time.monotonic() - cached[0] < server.list_seconds:
                listing.tools.extend(cached[1])
                continue
            try:
                session = await self._session(server)
                listed = await asyncio.wait_for(session.list_tools(), timeout=server.timeout_seconds)
            except (ToolUnavailable, MCPError, TimeoutError, OSError) as err:
                await self._drop(server)
                listing.unavailable[server.name] = _reason(err)
                continue
            tools = [
                OfferedTool(
                    name=tool.name,
                    description=tool.description or "",
                    parameters=tool.input_schema or {"type": "object", "properties": {}},
                    kind="mcp",
                    server=server.name,
                    approval=server.approval,
                    timeout_seconds=server.timeout_seconds,
                    attempts=server.attempts,
                )
                for tool in listed.tools
                if server.allows(tool.name) and _NAME.match(tool.name)
            ]
            self._listed[server.name] = (time.monotonic(), tools)
            listing.tools.extend(tools)
        return listing

    async def call(
        self,
        server: McpServer,
        name: str,
        arguments: dict[str, Any],
        idempotency_key: str,
        *,
        user: str | None = None,
    ) -> Any:
        """The tool's result (its structured content, else its text); an error the tool reports is
        `ToolFailed` (for the model); a server that is down or does not answer fails the attempt. The
        conversation's verified end user, when it has one, goes in the request's `_meta` (`end_user`)."""
        meta: dict[str, str] = {"idempotency_key": idempotency_key}
        if user is not None:
            meta["end_user"] = user
        session = await self._session(server)
        try:
            result = await session.call_tool(
                name,
                arguments,
                read_timeout_seconds=server.timeout_seconds,
                # An open map in the protocol; the SDK's TypedDict names only its reserved keys.
                meta=cast(RequestParamsMeta, meta),
            )
        except MCPError as err:
            if err.code == CONNECTION_CLOSED:
                await self._drop(server)
            raise ToolUnavailable(f"MCP server {server.name}: {err.error.message}") from err
        text = "\n".join(part.text for part in result.content if part.type == "text")
        if result.is_error:
            raise ToolFailed(text or f"the tool {name} failed")
        return result.structured_content if result.structured_content is not None else text

    async def close(self) -> None:
        for session in list(self._sessions.values()):
            await session.close()
        self._sessions.clear()

    async def _session(self, server: McpServer) -> ClientSession:
        current = self._sessions.get(server.name)
        if current is None or not current.alive:
            current = self._sessions[server.name] = _Session(server, self._bot_dir)
        return await current.get()

    async def _drop(self, server: McpServer) -> None:
        dropped = self._sessions.pop(server.name, None)
        self._listed.pop(server.name, None)
        if dropped is not None:
            await dropped.close()


def _reason(err: BaseException | None) -> str:
    """The innermost error of the SDK's (nested) exception groups, in a line."""
    while isinstance(err, BaseExceptionGroup) and err.exceptions:
        err = err.exceptions[0]
    if isinstance(err, MCPError):
        return err.error.message
    return f"{err.__class__.__name__}: {err}" if err is not None else "unknown"
