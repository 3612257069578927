"""The agent's MCP servers, through the official `mcp` SDK: each server's session is opened once per
worker and kept (a stdio server costs about half a second to start, a call on an open session about a
millisecond), its tool list cached for the server's `list_seconds`.

A session is owned by one task: the SDK's transports are anyio task groups, which must be closed by the
task that opened them. A session whose server died (the SDK's "connection closed") is dropped, and the
call fails its attempt: Temporal retries it, and the retry opens a new session. The call's idempotency
key goes in the request's `_meta` (`idempotency_key`), for servers whose tools act.

A server is a third party: what it says is cut as an HTTP service's answer is (a result at
MAX_RESPONSE_BYTES, an error at MAX_ERROR_CHARS, each said cut; over stdio a message past
`mcp_stdio.MAX_LINE_BYTES` is not even kept), and its tools are pinned when first listed
(`dialogue.brain.agent.mcp_pins`).
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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import httpx2
import orjson
from mcp import ClientSession, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import RequestParamsMeta
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from dialogue.brain.agent.http_tools import (
    MAX_ERROR_CHARS,
    MAX_RESPONSE_BYTES,
    ToolUnavailable,
    expand_variables,
)
from dialogue.brain.agent.mcp_pins import check_pins
from dialogue.brain.agent.mcp_stdio import TOO_LONG, bounded_stdio_client
from dialogue.brain.python_tools import ToolFailed
from dialogue.model.contracts import McpToolList, OfferedTool
from dialogue.platform import store
from dialogue.platform.bot import BotDefinition
from dialogue.platform.tool_config import McpServer

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
            async with (
                bounded_stdio_client(parameters) as (read, write),
                ClientSession(read, write) as session,
            ):
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

    def __init__(self, bot: BotDefinition, engine: Engine) -> None:
        self._bot = bot.name
        self._engine = engine
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
            try:
                tools = await asyncio.to_thread(self._pinned, server, tools)
            except SQLAlchemyError as err:  # unchecked tools are not offered: the server waits for the store
                listing.unavailable[server.name] = f"its tools' pins cannot be read: {err.__class__.__name__}"
                continue
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
            if err.code == TOO_LONG:  # asking again would have the worker read it all again
                raise ToolFailed(f"[cut: {err.error.message}]") from err
            if err.code == CONNECTION_CLOSED:
                await self._drop(server)
            raise ToolUnavailable(
                f"MCP server {server.name}: {_cut(err.error.message, MAX_ERROR_CHARS)}"
            ) from err
        text = "\n".join(part.text for part in result.content if part.type == "text")
        if result.is_error:
            raise ToolFailed(_cut(text, MAX_ERROR_CHARS) or f"the tool {name} failed")
        if result.structured_content is not None:
            encoded = orjson.dumps(result.structured_content)
            if len(encoded) <= MAX_RESPONSE_BYTES:
                return result.structured_content
            text = encoded.decode()
        return _cut(text, MAX_RESPONSE_BYTES)

    def _pinned(self, server: McpServer, tools: list[OfferedTool]) -> list[OfferedTool]:
        """The listed tools against their pins: new ones pinned, changed ones refused (or, where the bot
        accepts changes, pinned anew); either way a change is logged."""
        checked = check_pins(
            tools,
            store.mcp_tool_pins(self._engine, self._bot, server.name),
            accept_changes=server.accept_changes,
        )
        for tool in checked.changed:
            log.warning(
                "MCP server %s changed tool %s since it was pinned: %s",
                server.name,
                tool,
                "pinned anew (accept_changes)" if server.accept_changes else "not offered",
            )
        if checked.pins:
            store.pin_mcp_tools(self._engine, self._bot, server.name, checked.pins, at=datetime.now(UTC))
        return checked.tools

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


def _cut(text: str, limit: int) -> str:
    """`text` at most `limit` bytes of UTF-8, said cut when it was longer: a server's words are bounded."""
    encoded = text.encode()
    if len(encoded) <= limit:
        return text
    return f"{encoded[:limit].decode(errors='ignore')}\n[cut: the answer was longer than {limit} bytes]"


def _reason(err: BaseException | None) -> str:
    """The innermost error of the SDK's (nested) exception groups, in a line."""
    while isinstance(err, BaseExceptionGroup) and err.exceptions:
        err = err.exceptions[0]
    if isinstance(err, MCPError):
        return _cut(err.error.message, MAX_ERROR_CHARS)
    return _cut(f"{err.__class__.__name__}: {err}", MAX_ERROR_CHARS) if err is not None else "unknown"
