"""Request limits: the body's size and the time it takes to arrive, a rate per caller, turns in flight
per process and per tenant, and event streams per key and per tenant.

The body size is counted on the bytes received (a client may omit or misstate Content-Length).

A body declared too large is refused before it is read; a body that grows too large
while streaming raises a 413 `HTTPException`, and one that does not arrive in time a 408, which the
error handlers render in the API's one error shape. (FastAPI's own `max_body_size` answers the
declared case in plain text, outside the reach of our handlers.)
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import ERRORS, ApiError, PreparedResponse, error_response, translate
from api.request_telemetry import TURN_ROUTE, count_request
from dialogue.platform.metrics import (
    EVENT_STREAMS,
    EVENT_STREAMS_REFUSED,
    TURN_ADMISSION_LIMIT,
    TURNS_IN_FLIGHT,
    TURNS_RESENT_EARLY,
    TURNS_SHED,
)

log = logging.getLogger("dialogue.api")


class BodyLimits:
    """A request body of at most `max_bytes`, all of it within `read_seconds` of the app starting to read
    it: a client that trickles its body would otherwise hold its request (and a turn's admission) open for
    as long as it likes, since uvicorn sets no deadline on a body."""

    def __init__(self, app: ASGIApp, max_bytes: int, read_seconds: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.read_seconds = read_seconds

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
        deadline: float | None = None
        complete = False

        async def limited_receive() -> Message:
            nonlocal received, deadline, complete
            if complete:
                # After the body, a streaming response waits here for the client to go away: no deadline.
                return await receive()
            loop = asyncio.get_running_loop()
            if deadline is None:
                deadline = loop.time() + self.read_seconds
            try:
                event = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise HTTPException(
                    408, f"the request body did not arrive within {self.read_seconds:g} seconds"
                ) from None
            if event["type"] == "http.request":
                received += len(event.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, message)
                complete = not event.get("more_body", False)
            else:
                complete = True  # the client went away
            return event

        await self.app(scope, limited_receive, send)


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
SHED_LOG_SECONDS = 5.0
"""The turns shed are logged once per this long, counted by tenant, rather than one line each."""
MAX_PREPARED_ANSWERS = 1024
SHED_RETRY_AFTER_SECONDS = float(ERRORS["overloaded"].retry_after or 1)
MAX_NOTED_CONVERSATIONS = 10_000


class TurnAdmission:
    """Load shedding: a turn past this process's admission limit is answered 503 `overloaded` with
    `Retry-After` at once, without touching Temporal, so that under overload the turns admitted are
    answered within their deadline instead of every turn queueing past it. Turns count from their
    request until their reply (a streamed one until its stream ends). Pure ASGI, like the telemetry, so
    streams pass through untouched.

    A turn's caller is authenticated here, before its body is read and before it is counted (the route
    then finds the principal on the request's state, see `api/deps.py`): a caller without a valid key is
    refused 401 at once, and cannot hold a slot by sending its body slowly. The turns in flight are
    counted per tenant, and at the limit a tenant is shed only when it holds its fair share (see
    `tenant_admitted`): one tenant's flood never sheds another tenant's turn.

    The limit is the lower of `limit` (a fixed ceiling) and the turns the stack can answer within
    `budget_seconds` at the rate it has been answering them (Little's law: in flight = rate x wait), but
    never below `floor` (a burst after a quiet spell, when the rate says little). Under overload the rate
    is the stack's capacity, so the turns admitted wait about `budget_seconds` and the stack stays busy;
    below it, nothing is refused.

    Refusing is cheap, so that a flood of clients that resend at once is not served by what it is refused
    with (bench/flood.py): this is the app's outermost layer (`outermost`), so a refusal is answered before
    anything traces, logs or routes the request, from a response rendered once (`PreparedResponse`, through
    `cors` when the API is open to browsers on other origins); the caller is authenticated on a worker
    thread only when that may wait on I/O (`blocks`: a key in the store); a refusal is counted in the
    metrics as the request telemetry counts a request, and the turns shed are logged per tenant every
    SHED_LOG_SECONDS, not one line each.

    And a refusal is not given again sooner than it said: a turn sent to a conversation whose turn was shed
    less than `Retry-After` ago (a client that resends at once) is held until then, then admitted or shed
    as any turn. Held, it costs the API a timer; refused at once, it would come back at once, as often as
    the cores allow, and take them from the turns admitted. A client that waits as told is never held."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        authenticate: Callable[[Request], Any],
        blocks: Callable[[Request], bool],
        limit: int,
        budget_seconds: float = 0,
        floor: int = 64,
        share_floor: int = 1,
        cors: Mapping[str, Any] | None = None,
    ) -> None:
        self.app = app
        self.authenticate = authenticate
        self.blocks = blocks
        self.limit = limit
        self.budget_seconds = budget_seconds
        self.floor = floor
        self.share_floor = share_floor
        self.cors = cors
        self.in_flight = 0
        self.held: dict[str, int] = {}
        """Turns in flight per tenant; a tenant with none has no entry (the dict stays small)."""
        self._answered = AnswerRate()
        self._answers: dict[tuple[str, str, tuple[tuple[str, str], ...]], ASGIApp] = {}
        self._shed: Counter[str] = Counter()
        self._retry_after: dict[tuple[str, str], float] = {}
        """When each conversation whose turn was shed may send again (monotonic seconds), by tenant and path."""

    def admits(self) -> int:
        """How many turns in flight this process admits now."""
        if self.budget_seconds <= 0:
            return self.limit
        admits = admission_limit(self._answered.per_second(), self.budget_seconds, self.limit, self.floor)
        TURN_ADMISSION_LIMIT.set(admits)
        return admits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not TURN_PATH.match(scope["path"]):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request = Request(scope, receive)
        try:
            if self.blocks(request):
                # A worker thread: the key lookup may block. The principal is kept on the request's state.
                principal = await run_in_threadpool(self.authenticate, request)
            else:
                principal = self.authenticate(request)
        except ApiError as refused:
            await self._refuse(refused, scope, receive, send, started)
            return
        except Exception as err:  # outside the app's error handlers: answered as they would answer it
            await self._refuse(_authentication_failed(err, scope["path"]), scope, receive, send, started)
            return
        if self.limit <= 0:
            await self.app(scope, receive, send)
            return
        tenant: str = principal.tenant
        conversation = (tenant, scope["path"])
        wait = self._retry_after.get(conversation, 0.0) - time.monotonic()
        if wait > 0:
            TURNS_RESENT_EARLY.inc()
            await asyncio.sleep(wait)
        admits = self.admits()
        held = self.held.get(tenant, 0)
        tenants = len(self.held) + (0 if held else 1)
        if not tenant_admitted(
            held=held, in_flight=self.in_flight, tenants=tenants, limit=admits, share_floor=self.share_floor
        ):
            self._count_shed(tenant)
            self._note_retry_after(conversation)
            message = f"the service is at its limit of {admits} turns in flight; retry shortly"
            await self._refuse(ApiError("overloaded", message), scope, receive, send, started)
            return
        self.in_flight += 1
        self.held[tenant] = held + 1
        TURNS_IN_FLIGHT.inc()
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
            left = self.held[tenant] - 1
            if left:
                self.held[tenant] = left
            else:
                del self.held[tenant]
            TURNS_IN_FLIGHT.dec()
            self._answered.count()

    async def _refuse(
        self, error: ApiError, scope: Scope, receive: Receive, send: Send, started: float
    ) -> None:
        await self._answer(error)(scope, receive, send)
        count_request("POST", TURN_ROUTE, error.status, time.perf_counter() - started, {})

    def _answer(self, error: ApiError) -> ASGIApp:
        """The refusal's response, rendered the first time it is given (they are few: a code, a message
        naming the admission limit, a `Retry-After`)."""
        key = (error.code, error.message, tuple(sorted(error.headers.items())))
        answer = self._answers.get(key)
        if answer is None:
            if len(self._answers) >= MAX_PREPARED_ANSWERS:
                self._answers.clear()
            answer = PreparedResponse(error)
            if self.cors is not None:
                # Outside the app's own CORS layer: a page on an allowed origin reads the refusal too.
                answer = CORSMiddleware(answer, **self.cors)
            self._answers[key] = answer
        return answer

    def _note_retry_after(self, conversation: tuple[str, str]) -> None:
        now = time.monotonic()
        if len(self._retry_after) >= MAX_NOTED_CONVERSATIONS:
            # Those whose time has passed hold nothing: the dict keeps about one second's refusals.
            self._retry_after = {c: at for c, at in self._retry_after.items() if at > now}
            if len(self._retry_after) >= MAX_NOTED_CONVERSATIONS:
                return
        self._retry_after[conversation] = now + SHED_RETRY_AFTER_SECONDS

    def _count_shed(self, tenant: str) -> None:
        TURNS_SHED.inc()
        if not self._shed:
            asyncio.get_running_loop().call_later(SHED_LOG_SECONDS, self._log_shed)
        self._shed[tenant] += 1

    def _log_shed(self) -> None:
        shed, self._shed = self._shed, Counter()
        log.warning(
            "shed %d turns in %g s at the admission limit",
            shed.total(),
            SHED_LOG_SECONDS,
            extra={"shed_by_tenant": dict(shed.most_common(20))},  # who floods, for the runbook
        )


def _authentication_failed(err: Exception, path: str) -> ApiError:
    unavailable = translate(err) if isinstance(err, SQLAlchemyError) else None
    if unavailable is not None:
        # The store cannot say who this is (an unknown key during an outage): 503, as a route would answer.
        log.warning("store unavailable on POST %s: %s", path, err.__class__.__name__)
        return unavailable
    log.exception("unhandled error on POST %s", path)
    return ApiError("internal_error", "internal server error")


def outermost(app: Starlette, layer: Callable[[ASGIApp], ASGIApp]) -> None:
    """Put `layer` around the app's whole middleware stack, its error handler and tracing included:
    `add_middleware` puts a layer inside Starlette's error handler, and the OpenTelemetry instrumentation
    wraps the stack around it. Starlette builds the stack when the app first serves a request."""
    build = app.build_middleware_stack

    def build_with_layer() -> ASGIApp:
        return layer(build())

    app.build_middleware_stack = build_with_layer  # type: ignore[method-assign]


def tenant_admitted(*, held: int, in_flight: int, tenants: int, limit: int, share_floor: int) -> bool:
    """Whether a tenant holding `held` of the process's `in_flight` turns is admitted one more, when
    `tenants` tenants (itself included) hold turns and the process admits `limit`.

    Below the limit every tenant is admitted: nothing idles while one tenant is busy. At it, a tenant is
    admitted only while under its fair share (`fair_share`): whoever floods is the one shed. The tenants
    under their share hold about the limit at most between them, so the process holds at most twice its
    limit (a hard ceiling, for when many tenants each hold a floor's worth), and only while the flooding
    tenant's turns drain: it is admitted no new one until the process is below its limit again."""
    if in_flight < limit:
        return True
    if in_flight >= 2 * limit:
        return False
    return held < fair_share(limit, tenants, share_floor)


def fair_share(limit: int, tenants: int, floor: int) -> int:
    """A tenant's share of `limit` turns in flight among `tenants` tenants: an equal part, at least
    `floor`, at most the limit (a lone tenant's share is the whole of it)."""
    return min(limit, max(floor, limit // max(1, tenants)))


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


class StreamSlots:
    """Event streams open in this process per key (or token) and per tenant, each within its cap: an open
    stream holds a connection, and its conversation's reader, for as long as it lasts.

    Per API process, like the rate limit. Used from the event loop only (the routes are async)."""

    def __init__(self, *, per_key: int, per_tenant: int) -> None:
        self.per_key = per_key
        self.per_tenant = per_tenant
        self._keys: dict[str, int] = {}
        self._tenants: dict[str, int] = {}

    def take(self, *, subject: str, tenant: str) -> Callable[[], None]:
        """One more stream for this caller (429 `too_many_streams` past a cap); returns what gives it back."""
        if self._keys.get(subject, 0) >= self.per_key:
            EVENT_STREAMS_REFUSED.inc()
            raise ApiError("too_many_streams", f"this key has {self.per_key} event streams open, its limit")
        if self._tenants.get(tenant, 0) >= self.per_tenant:
            EVENT_STREAMS_REFUSED.inc()
            raise ApiError(
                "too_many_streams", f"this tenant has {self.per_tenant} event streams open, its limit"
            )
        _add(self._keys, subject, 1)
        _add(self._tenants, tenant, 1)
        EVENT_STREAMS.inc()
        given_back = False

        def give_back() -> None:
            nonlocal given_back
            if not given_back:
                given_back = True
                _add(self._keys, subject, -1)
                _add(self._tenants, tenant, -1)
                EVENT_STREAMS.dec()

        return give_back


def _add(counts: dict[str, int], name: str, change: int) -> None:
    """Change a count, dropping it at zero: the dict holds only the callers with streams open."""
    count = counts.get(name, 0) + change
    if count:
        counts[name] = count
    else:
        counts.pop(name, None)
