"""An MCP server over stdio whose messages are bounded: the SDK's `stdio_client` with a reader that keeps
at most MAX_LINE_BYTES of a line.

The SDK reads a server's stdout into one growing string, whatever its length, and joins each chunk onto
it (a 50 MB answer costs the worker gigabytes of copying and minutes of CPU before the call could be cut).
Here a line longer than MAX_LINE_BYTES is read to its end but not kept, and the request it answered gets
a JSON-RPC error instead (`TOO_LONG`), which the call turns into a result the model reads, said cut.
The process is started, stopped and written to by the SDK's own helpers.
"""

from __future__ import annotations

import re
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TextIO

import anyio
import anyio.lowlevel
import mcp_types as types
import orjson
from mcp.client import stdio as sdk
from mcp.client._transport import TransportStreams
from mcp.shared.message import SessionMessage

MAX_LINE_BYTES = 4_000_000
"""A message from a server at most: room for a result of MAX_RESPONSE_BYTES, said twice (as structured
content and as its text), with its envelope."""
TOO_LONG = -32099
"""The JSON-RPC error code (in the range for implementations) of an answer longer than MAX_LINE_BYTES."""
_ID = re.compile(rb'"id"\s*:\s*(-?\d+|"(?:[^"\\]|\\.){0,200}")')


@asynccontextmanager
async def bounded_stdio_client(
    server: sdk.StdioServerParameters, errlog: TextIO = sys.stderr
) -> AsyncIterator[TransportStreams]:
    """`mcp.client.stdio.stdio_client`, its reader bounded (see the module)."""
    command = await sdk._get_executable_command(server.command)
    process = await sdk._create_platform_compatible_process(
        command=command,
        args=server.args,
        env=sdk.get_default_environment() | (server.env or {}),
        errlog=errlog,
        cwd=server.cwd,
    )
    read_stream_writer, read_stream = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    write_stream, write_stream_reader = anyio.create_memory_object_stream[SessionMessage](0)
    writer_done = anyio.Event()

    async def stdout_reader() -> None:
        assert process.stdout is not None
        try:
            async with read_stream_writer:
                try:
                    async for line in _lines(process.stdout):
                        try:
                            await read_stream_writer.send(
                                _too_long(line) if isinstance(line, _Dropped) else sdk._parse_line(line)
                            )
                        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                            return
                finally:
                    await sdk._drain_stdout(process)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, ConnectionError):
            pass  # the session closes when the read stream does

    async def stdin_writer() -> None:
        assert process.stdin is not None
        try:
            async with write_stream_reader:
                async for message in write_stream_reader:
                    data = message.message.model_dump_json(by_alias=True, exclude_unset=True) + "\n"
                    await process.stdin.send(data.encode(server.encoding, server.encoding_error_handler))
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            await read_stream_writer.aclose()
        finally:
            writer_done.set()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(stdout_reader)
        tasks.start_soon(stdin_writer)
        try:
            yield read_stream, write_stream
        finally:
            with anyio.CancelScope(shield=True):  # the server is stopped even when the caller is cancelled
                read_stream.close()
                write_stream.close()
                with anyio.move_on_after(0.5):
                    await writer_done.wait()
                await sdk._stop_server_process(process)
                await sdk._aclose_all(read_stream, write_stream, read_stream_writer, write_stream_reader)
                await anyio.lowlevel.checkpoint()
            tasks.cancel_scope.cancel()


class _Dropped(bytes):
    """The start of a line that was longer than MAX_LINE_BYTES (the rest was read and let go)."""


async def _lines(stdout: anyio.abc.ByteReceiveStream) -> AsyncIterator[str | _Dropped]:
    """The server's lines, decoded; a line past MAX_LINE_BYTES as its start only. Linear in what is read."""
    buffer = bytearray()
    dropping: _Dropped | None = None
    async for chunk in stdout:
        start = 0
        while (end := chunk.find(b"\n", start)) != -1:
            if dropping is not None:
                yield dropping
                dropping = None
            else:
                buffer += chunk[start:end]
                yield buffer.decode("utf-8", errors="replace")
            buffer.clear()
            start = end + 1
        if dropping is None:
            buffer += chunk[start:]
            if len(buffer) > MAX_LINE_BYTES:
                dropping = _Dropped(buffer[:256])
                buffer.clear()


def _too_long(head: bytes) -> SessionMessage | Exception:
    """The error that answers, in the server's place, the request whose answer was too long."""
    found = _ID.search(head)
    if found is None:
        return ValueError(f"an MCP server's message was longer than {MAX_LINE_BYTES} bytes")
    message = types.JSONRPCError(
        jsonrpc="2.0",
        id=orjson.loads(found.group(1)),
        error=types.ErrorData(
            code=TOO_LONG, message=f"the answer was longer than {MAX_LINE_BYTES} bytes: not read"
        ),
    )
    return SessionMessage(message)
