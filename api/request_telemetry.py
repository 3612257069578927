"""Per-request telemetry: a latency histogram by route and status, turn outcomes, one log line per request,
and the trace id in the response's `X-Trace-Id` header (the id to search for in logs and traces)."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request, Response
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.semconv.attributes.http_attributes import HTTP_ROUTE
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from temporalio.client import Client

from dialogue.model.contracts import TurnReply
from dialogue.platform.logs import current_trace_id, log_context, message_text
from dialogue.platform.metrics import (
    BOT_TURN_KINDS,
    BOT_TURN_SECONDS,
    BOT_TURNS,
    BROKEN_CONVERSATIONS,
    HTTP_REQUEST_SECONDS,
    TURN_SECONDS,
    TURNS,
)
from dialogue.platform.recovery import BROKEN, broken_conversations
from dialogue.platform.version_numbers import bot_turn

log = logging.getLogger("dialogue.api")

TURN_ROUTE = "/v1/conversations/{conversation_id}/turns"
TURN_REQUEST = re.compile(r"^/v1/conversations/[^/]+/turns$")
TRACE_HEADER = b"x-trace-id"
KNOWN_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
QUIET_ROUTES = {"/healthz", "/readyz", "/metrics"}
"""Probed every few seconds: counted, but not worth a log line each."""

metrics_router = APIRouter(tags=["health"])


BROKEN_REFRESH_SECONDS = 15.0
BROKEN_TIMEOUT_SECONDS = 2.0


@metrics_router.get("/metrics", response_class=Response)
async def read_metrics(request: Request) -> Response:
    """Prometheus metrics of this API process (no authentication: expose it on the internal network only)."""
    await _refresh_broken_conversations(request.app.state)
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


async def _refresh_broken_conversations(state: Any) -> None:
    """Count broken conversations in Temporal's visibility, at most every BROKEN_REFRESH_SECONDS and within
    BROKEN_TIMEOUT_SECONDS; when Temporal cannot say, the last count stays (and `/readyz` tells why)."""
    read_at: float | None = getattr(state, "broken_read_at", None)
    if read_at is not None and time.monotonic() - read_at < BROKEN_REFRESH_SECONDS:
        return
    state.broken_read_at = time.monotonic()
    temporal: Client = state.temporal
    try:
        broken = await asyncio.wait_for(broken_conversations(temporal), BROKEN_TIMEOUT_SECONDS)
    except Exception as err:  # a scrape must not fail for it
        log.warning("could not count broken conversations: %s", err.__class__.__name__)
        return
    for status in BROKEN.values():
        BROKEN_CONVERSATIONS.labels(status).set(sum(b.status == status for b in broken))


def mark_turn(state: Any, reply: TurnReply) -> None:
    """Called by the turn route with the reply: the status code alone cannot tell a degraded answer.
    The words go into the request's log line only when `log_message_text` is set (redacted as stored)."""
    state.turn_id = reply.turn_id
    state.turn_outcome = "degraded" if reply.degraded else "ok"
    texts = {"user_text": message_text(reply.user_text), "reply_text": message_text(reply.reply.text)}
    state.turn_texts = {name: text for name, text in texts.items() if text is not None}
    _count_for_version(reply)


def _count_for_version(reply: TurnReply) -> None:
    """The answered turn in its bot version's counters (the store's numbers, `GET /v1/bots/{bot}/numbers`,
    are every replica's; these, this process's, for Prometheus to sum)."""
    lineage = reply.lineage
    if lineage is None or lineage.bot is None or lineage.bot_version is None or reply.interrupted:
        return
    turn = bot_turn(
        reply.conversation_id,
        reply.turn_id,
        datetime.now(UTC),
        degraded=reply.degraded,
        nlu=reply.nlu,
        lineage=lineage,
    )
    if turn is None:
        return
    bot, version = turn.bot, turn.version
    BOT_TURNS.labels(bot, version, "degraded" if turn.degraded else "ok").inc()
    for kind in ("fallback", "out_of_scope", "handoff"):
        if getattr(turn, kind):
            BOT_TURN_KINDS.labels(bot, version, kind).inc()
    if turn.latency_ms is not None:
        BOT_TURN_SECONDS.labels(bot, version).observe(turn.latency_ms / 1000)


def count_request(method: str, route: str, status: int, seconds: float, state: dict[str, Any]) -> str | None:
    """The request in the metrics: its latency by route and status, and a turn's outcome, which it returns.
    Also for the turns refused before they reach this layer (`api/limits.py`, `TurnAdmission`)."""
    HTTP_REQUEST_SECONDS.labels(method, route, str(status)).observe(seconds)
    outcome = _turn_outcome(status, state) if route == TURN_ROUTE and method == "POST" else None
    if outcome is not None:
        TURNS.labels(outcome).inc()
        TURN_SECONDS.labels(outcome).observe(seconds)
    return outcome


def _turn_outcome(status: int, state: dict[str, Any]) -> str | None:
    if status in (202, 204):
        return None  # queued, or a resumed stream that had ended: no answer was given by this request
    if status >= 500:
        return "failed"
    if status >= 400:
        return "rejected"
    return str(state.get("turn_outcome", "ok"))


def _route_template(scope: Scope) -> str:
    """The matched route's full template (`/v1/conversations/{conversation_id}/turns`): bounded label values.

    FastAPI keeps an included router's route in scope without the router's prefix; the effective
    route context it records beside it has the full path.
    """
    context = (scope.get("fastapi") or {}).get("effective_route_context")
    path = getattr(context, "path", None) or getattr(scope.get("route"), "path", None)
    return str(path) if path else "unmatched"


SpanDetails = Callable[[dict[Any, Any]], tuple[str, dict[Any, Any]]]
"""What OpenTelemetry's ASGI middleware calls for a request's span name and attributes."""


def turn_spans_named_at_once(stack: ASGIApp) -> ASGIApp:
    """The OpenTelemetry middleware in `stack`, naming a turn's span without looking for its route.

    It names each request's span after the route it will take, found by matching the path against the
    app's whole route table, flattened anew for each request (`_get_route_details`): about 4% of the
    API's CPU per answered turn (bench/flood.py --profile, "route matching"). A turn, the request sent
    most, has one route a regular expression tells; every other request is named as before."""
    layer: Any = stack
    while layer is not None:
        if isinstance(layer, OpenTelemetryMiddleware):
            layer.default_span_details = _turns_first(layer.default_span_details)
            break
        layer = getattr(layer, "app", None)
    return stack


def _turns_first(details: SpanDetails) -> SpanDetails:
    def span_details(scope: dict[Any, Any]) -> tuple[str, dict[Any, Any]]:
        if scope.get("method") == "POST" and TURN_REQUEST.match(scope["path"]):
            return f"POST {TURN_ROUTE}", {HTTP_ROUTE: TURN_ROUTE}
        return details(scope)

    return span_details


class RequestTelemetry:
    """Pure ASGI (not BaseHTTPMiddleware), so streamed responses pass through untouched; it sits inside the
    OpenTelemetry middleware, whose span is current here."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        trace_id = current_trace_id()

        async def send_with_trace(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if trace_id:
                    message["headers"] = [*message.get("headers", []), (TRACE_HEADER, trace_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_trace)
        finally:
            self._observe(scope, status, time.perf_counter() - started, trace_id)

    def _observe(self, scope: Scope, status: int, seconds: float, trace_id: str | None) -> None:
        route = _route_template(scope)
        # h11 accepts any token as a method: an unknown one must not mint a new label value.
        method = scope["method"] if scope["method"] in KNOWN_METHODS else "other"
        state: dict[str, Any] = scope.get("state") or {}
        outcome = count_request(method, route, status, seconds, state)
        if route in QUIET_ROUTES:
            return
        conversation_id = (scope.get("path_params") or {}).get("conversation_id")
        tenant = state.get("tenant")
        key = f"{tenant}/{conversation_id}" if tenant and conversation_id else None
        with log_context(key, state.get("turn_id")):
            log.info(
                "%s %s %s",
                method,
                route,
                status,
                extra={
                    "method": method,
                    "route": route,
                    "status": status,
                    "duration_ms": round(seconds * 1000, 2),
                    **({"tenant": tenant} if tenant and not key else {}),
                    **({"turn_outcome": outcome} if outcome else {}),
                    **state.get("turn_texts", {}),
                },
            )
