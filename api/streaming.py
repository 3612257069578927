"""Server-sent events from the conversation event log.

A streamed turn's events (its NLU result, sources and tokens) come from the event log the
`generate` activity writes, numbered per conversation; the last event, `final`, is the
turn's reply from Temporal. Event ids are those numbers, so a client that reconnects with
`Last-Event-ID` resumes after the last event it saw. The final event's id is
`<number>-final`: a client that reconnects after it gets 204 (EventSource then stops).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from fastapi.sse import EventSourceResponse, format_sse_event
from sqlalchemy.engine import Engine
from starlette.types import Receive, Scope, Send

from api.errors import ApiError, translate
from api.feeds import EventFeeds, read_events
from dialogue.model.contracts import TurnReply
from dialogue.platform.db import ConversationEvent

log = logging.getLogger("dialogue.api")

POLL_SECONDS = 0.01
"""How often a turn's stream looks for new events: the bound on the delay it adds to each token. A turn's
stream reads by itself (it lasts one turn, and admission counts it); a conversation's streams share one
reader per conversation (`api/feeds.py`)."""
KEEPALIVE_SECONDS = 15.0
FINAL_SUFFIX = "-final"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class ResumePoint:
    """Where a reconnecting client left off, from its `Last-Event-ID`."""

    def __init__(self, last_event_id: str | None) -> None:
        value = (last_event_id or "").strip()
        self.finished = value.endswith(FINAL_SUFFIX)
        number = value.removesuffix(FINAL_SUFFIX)
        # ASCII digits only, and within a 64-bit integer: anything else starts from the beginning.
        self.after = int(number) if re.fullmatch(r"[0-9]{1,18}", number) else 0


def sse(event: str, data: Any, event_id: str | None = None) -> bytes:
    return format_sse_event(data_str=orjson.dumps(data).decode(), event=event, id=event_id)


def _logged(row: ConversationEvent) -> bytes:
    # `at` is when the worker produced the event: clients can measure how late it arrived.
    return sse(row.kind, {**row.data, "seq": row.seq, "turn_id": row.turn_id, "at": row.at}, str(row.seq))


def stream_response(
    body: AsyncIterator[bytes], *, on_close: Callable[[], None] | None = None
) -> EventSourceResponse:
    """An event stream of `body`; `on_close` is called once it is over, however it ends (the slot it held
    given back, see `api/limits.py`'s `StreamSlots`)."""
    if on_close is None:
        return EventSourceResponse(body, headers=HEADERS)
    return _ClosingEventSource(body, headers=HEADERS, on_close=on_close)


class _ClosingEventSource(EventSourceResponse):
    """Calls `on_close` when the response is over: the body generator's own `finally` does not run when the
    client leaves before its first event."""

    def __init__(
        self, body: AsyncIterator[bytes], *, headers: dict[str, str], on_close: Callable[[], None]
    ) -> None:
        super().__init__(body, headers=headers)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


async def turn_stream(
    engine: Engine,
    conversation_id: str,
    turn_id: str,
    reply: Callable[[], Awaitable[TurnReply]],
    *,
    after: int,
    timeout_seconds: float,
) -> AsyncIterator[bytes]:
    """A turn's logged events after `after`, then its reply as the `final` event."""
    result = asyncio.ensure_future(reply())
    last = after
    deadline = time.monotonic() + timeout_seconds
    try:
        while True:
            finished = result.done()  # before reading: what the turn wrote before it finished is read now
            rows = await read_events(engine, conversation_id, after=last, turn_id=turn_id)
            for row in rows:
                yield _logged(row)
                last = row.seq
            if finished and not rows:
                break
            if time.monotonic() > deadline:
                yield sse("error", _error_body(ApiError("turn_timeout", _retry_hint(turn_id))))
                return
            await asyncio.wait({result}, timeout=POLL_SECONDS)
        try:
            final = result.result()
        except Exception as exc:
            mapped = translate(exc, conversation_id) or ApiError("turn_failed", "the turn failed")
            yield sse("error", _error_body(mapped))
            return
        yield sse("final", final.model_dump(mode="json"), f"{last}{FINAL_SUFFIX}")
    finally:
        if not result.done():
            result.cancel()


async def conversation_stream(
    feeds: EventFeeds, conversation_id: str, *, after: int, max_seconds: float, announce: bool = False
) -> AsyncIterator[bytes]:
    """Every event of the conversation after `after`, as it is logged, until the client goes away or
    `max_seconds` have passed: the stream then ends, and the client resumes with `Last-Event-ID` (an
    `EventSource` reconnects by itself), missing nothing. Ending bounds what one connection holds: a key
    revoked meanwhile is refused at the reconnect, and a restarting API is not held open.

    With `announce`, an `open` event first, whose id is `after`: a client that started "from now"
    and loses the connection before any other event comes resumes from there, missing nothing."""
    if announce:
        yield sse("open", {"after": after}, str(after))
    ends = time.monotonic() + max_seconds
    async with feeds.subscribe(conversation_id, after=after) as subscription:
        quiet_since = time.monotonic()
        while (left := ends - time.monotonic()) > 0:
            rows = await subscription.next(min(KEEPALIVE_SECONDS, left))
            for row in rows:
                yield _logged(row)
            if subscription.overflowed:
                return  # a client this far behind resumes from what it was sent
            if rows:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > KEEPALIVE_SECONDS:
                yield b": keep-alive\n\n"  # proxies close connections that stay silent
                quiet_since = time.monotonic()
    yield b": the stream's time is up; reconnect with Last-Event-ID\n\n"


def _retry_hint(turn_id: str) -> str:
    return f"turn {turn_id} is still running; reconnect with 'Idempotency-Key: {turn_id}' to follow it"


def _error_body(error: ApiError) -> dict[str, Any]:
    return {"status": error.status, "code": error.code, "message": error.message}
