"""A client that sends a request's body slowly, or never: HTTP/1.1 over a raw socket, since httpx sends a
whole body before it reads an answer."""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit

import httpx


class SlowClient:
    """A request whose headers and first bytes of body are sent, and the rest of the body never."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def start(
        cls,
        base_url: str,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        declared: int = 200,
        first: bytes = b'{"text": "hel',
    ) -> SlowClient:
        """POST `path` declaring a `declared`-byte JSON body, of which only `first` is sent."""
        url = urlsplit(base_url)
        host, port = url.hostname or "127.0.0.1", url.port or 80
        reader, writer = await asyncio.open_connection(host, port)
        lines = [
            f"POST {path} HTTP/1.1",
            f"Host: {host}:{port}",
            "Content-Type: application/json",
            f"Content-Length: {declared}",
            *(f"{name}: {value}" for name, value in (headers or {}).items()),
        ]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + first)
        await writer.drain()
        return cls(reader, writer)

    async def response(self) -> httpx.Response:
        """The answer the server sends while the body is still unsent (waits for it)."""
        status_line = await self._reader.readline()
        if not status_line:
            raise ConnectionError("the server closed the connection without an answer")
        status = int(status_line.split()[1])
        headers: list[tuple[str, str]] = []
        while (line := await self._reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode().partition(":")
            headers.append((name.strip(), value.strip()))
        length = next((int(v) for n, v in headers if n.lower() == "content-length"), None)
        body = await self._reader.readexactly(length) if length is not None else await self._reader.read()
        return httpx.Response(status, headers=headers, content=body)

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError):  # the server closed it first
            await self._writer.wait_closed()
