"""Request limits: the body size, and a rate per caller.

The body size is counted on the bytes received (a client may omit or misstate Content-Length).

A body declared too large is refused before it is read; a body that grows too large
while streaming raises a 413 `HTTPException`, which the error handlers render in the
API's one error shape. (FastAPI's own `max_body_size` answers the declared case in
plain text, outside the reach of our handlers.)
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import ApiError, error_response
from dialogue.platform.metrics import TURN_ADMISSION_LIMIT, TURNS_IN_FLIGHT, TURNS_SHED


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        message = f"request body exceeds {self.max_bytes} bytes"
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await error_response(ApiError("content_too_large", message))(scope, receive, send)
            return

        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            event = await receive()
            if event["type"] == "http.request":
                received += len(event.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, message)
            return event

        await self.app(scope, counting_receive, send)


MAX_BUCKETS = 10_000


class RateLimiter:
    """A token bucket per caller: `burst` requests at once, then `rate` per second.

    Per API process: with several replicas each keeps its own buckets, so a caller's
    ceiling is the rate times the replicas behind the load balancer.
    """

    def __init__(self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()  # callers run on FastAPI's worker threads

    def take(self, caller: str) -> int:
        """Take one token: 0 when allowed, else the whole seconds to wait (for `Retry-After`)."""
        if self._rate <= 0:
            return 0
        with self._lock:
            now = self._clock()
            tokens, then = self._buckets.get(caller, (self._burst, now))
            tokens = min(self._burst, tokens + (now - then) * self._rate)
            if len(self._buckets) > MAX_BUCKETS:
                self._forget_full(now)
            if tokens >= 1:
                self._buckets[caller] = (tokens - 1, now)
                return 0
            self._buckets[caller] = (tokens, now)
            return max(1, math.ceil((1 - tokens) / self._rate))

    def _forget_full(self, now: float) -> None:
        """Drop the buckets that have refilled: forgetting them changes nothing, and the dict stays small."""
        full = [
            c
            for c, (tokens, then) in self._buckets.items()
            if tokens + (now - then) * self._rate >= self._burst
        ]
        for caller in full:
            del self._buckets[caller]


TURN_PATH = re.compile(r"^/v1/conversations/[^/]+/turns/?$")
RATE_WINDOW_SECONDS = 5


class TurnAdmission:
    """Load shedding: a turn past this process's admission limit is answered 503 `overloaded` with
    `Retry-After` at once, without touching Temporal, so that under overload the turns admitted are
    answered within their deadline instead of every turn queueing past it. Turns count from their
    request until their reply (a streamed one until its stream ends). Pure ASGI, like the telemetry, so
    streams pass through untouched.

    The limit is the lower of `limit` (a fixed ceiling) and the turns the stack can answer within
    `budget_seconds` at the rate it has been answering them (Little's law: in flight = rate x wait), but
    never below `floor` (a burst after a quiet spell, when the rate says little). Under overload the rate
    is the stack's capacity, so the turns admitted wait about `budget_seconds` and the stack stays busy;
    below it, nothing is refused."""

    def __init__(self, app: ASGIApp, limit: int, budget_seconds: float = 0, floor: int = 64) -> None:
        self.app = app
        self.limit = limit
        self.budget_seconds = budget_seconds
        self.floor = floor
        self.in_flight = 0
        self._answered = AnswerRate()

    def admits(self) -> int:
        """How many turns in flight this process admits now."""
        if self.budget_seconds <= 0:
            return self.limit
        admits = admission_limit(self._answered.per_second(), self.budget_seconds, self.limit, self.floor)
        TURN_ADMISSION_LIMIT.set(admits)
        return admits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self.limit <= 0
            or scope["type"] != "http"
            or scope["method"] != "POST"
            or not TURN_PATH.match(scope["path"])
        ):
            await self.app(scope, receive, send)
            return
        admits = self.admits()
        if self.in_flight >= admits:
            TURNS_SHED.inc()
            message = f"the service is at its limit of {admits} turns in flight; retry shortly"
            await error_response(ApiError("overloaded", message))(scope, receive, send)
            return
        self.in_flight += 1
        TURNS_IN_FLIGHT.inc()
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
            TURNS_IN_FLIGHT.dec()
            self._answered.count()


def admission_limit(answered_per_second: float, budget_seconds: float, limit: int, floor: int) -> int:
    """Turns in flight to admit: those answered within `budget_seconds` at the rate the stack answers
    (Little's law), at least `floor`, at most `limit`."""
    affordable = math.ceil(answered_per_second * budget_seconds)
    return min(limit, max(floor, affordable))


class AnswerRate:
    """Turns answered per second over the last RATE_WINDOW_SECONDS, counted in one-second buckets."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[int, int] = {}

    def count(self) -> None:
        second = int(self._clock())
        self._buckets[second] = self._buckets.get(second, 0) + 1
        for old in [b for b in self._buckets if b <= second - RATE_WINDOW_SECONDS]:
            del self._buckets[old]

    def per_second(self) -> float:
        now = int(self._clock())
        # Whole seconds only: the current one is still filling.
        done = sum(n for second, n in self._buckets.items() if now - RATE_WINDOW_SECONDS <= second < now)
        return done / RATE_WINDOW_SECONDS
