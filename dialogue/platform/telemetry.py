"""Traces and the worker's metrics: OpenTelemetry from the HTTP request through the workflow to each
activity, and a worker `/metrics` that serves its own metrics beside the Temporal SDK's.

Tracing is off unless `tracing_exporter` names an exporter: the Temporal interceptor adds a header to
every workflow call and a span to every step, which a deployment with no collector should not pay for.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import urllib.request
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from temporalio import activity
from temporalio.client import Interceptor as ClientInterceptor
from temporalio.contrib.opentelemetry import TracingInterceptor
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
)

from dialogue.platform.logs import log_context
from dialogue.platform.metrics import STEP_SECONDS, TURN_QUEUE_DEPTH
from dialogue.platform.settings import Settings
from dialogue.platform.temporal import key_of


def tracer_provider(
    settings: Settings, service: str, *, exporter: SpanExporter | None = None
) -> TracerProvider:
    """The process's tracer provider, exporting where settings say, or nowhere: the API makes spans
    even then, so that every response and log line has a trace id to search by.

    `exporter` replaces the configured one (tests collect spans in memory).
    """
    provider = TracerProvider(resource=Resource.create({"service.name": f"dialogue-{service}"}))
    if exporter is None:
        if settings.tracing_exporter == "none":
            return provider
        if settings.tracing_exporter == "console":
            exporter = ConsoleSpanExporter()
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(endpoint=settings.otlp_endpoint)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def temporal_interceptors(provider: TracerProvider | None) -> list[ClientInterceptor]:
    """Client interceptors (a worker built on the client inherits them): spans for every Temporal call,
    with the trace context carried in headers into the workflow and its activities. None without a
    provider: the header and the spans cost every call something, worth paying only when exported."""
    if provider is None:
        return []
    return [TracingInterceptor(provider.get_tracer("dialogue"))]


def exported(settings: Settings, provider: TracerProvider) -> TracerProvider | None:
    """`provider` when settings export its spans, else None (for `temporal_interceptors`)."""
    return provider if settings.tracing_exporter != "none" else None


class StepTelemetry(Interceptor):
    """Per-step latency for every activity, and the conversation and turn in the activity's log lines."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _StepTelemetryInbound(next)


class _StepTelemetryInbound(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = activity.info()
        key = key_of(info.workflow_id) if info.workflow_id else None
        turn_id = next((getattr(arg, "turn_id", None) for arg in input.args), None)
        started = time.perf_counter()
        outcome = "error"
        try:
            with log_context(key, turn_id if isinstance(turn_id, str) else None):
                result = await super().execute_activity(input)
            outcome = "ok"
            return result
        except asyncio.CancelledError:
            outcome = "cancelled"  # by the turn's deadline, an interrupt or a shutdown: not a failure
            raise
        finally:
            STEP_SECONDS.labels(info.activity_type, outcome).observe(time.perf_counter() - started)


def _free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sdk_runtime() -> tuple[Runtime, str]:
    """A Temporal runtime exporting the SDK's worker metrics (and the workflow's own, such as the turn
    queue depth) in Prometheus format on a private loopback port; returns it with that endpoint's URL."""
    address = f"127.0.0.1:{_free_loopback_port()}"
    runtime = Runtime(
        telemetry=TelemetryConfig(
            metrics=PrometheusConfig(
                bind_address=address,
                durations_as_seconds=True,
                histogram_bucket_overrides={TURN_QUEUE_DEPTH: [0, 1, 2, 3, 5, 10]},
            )
        )
    )
    return runtime, f"http://{address}/metrics"


class WorkerMetricsServer:
    """The worker's `/metrics` (prometheus-client's registry followed by the SDK's exposition) and `/healthz`.

    One port per worker for Prometheus to scrape, instead of two: the SDK's own endpoint stays on loopback.
    """

    def __init__(self, host: str, port: int, sdk_metrics_url: str | None) -> None:
        sdk_url = sdk_metrics_url

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/healthz":
                    self._send(b'{"status":"ok"}', "application/json")
                elif self.path.split("?")[0] == "/metrics":
                    self._send(generate_latest(REGISTRY) + _read(sdk_url), CONTENT_TYPE_LATEST)
                else:
                    self.send_error(404)

            def _send(self, body: bytes, content_type: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # a scrape every few seconds is not worth a log line

        self._server = ThreadingHTTPServer((host, port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _read(url: str | None) -> bytes:
    if url is None:
        return b""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            body: bytes = response.read()
            return body
    except OSError:
        return b"# the Temporal SDK's metrics are not available\n"


def worker_interceptors() -> Sequence[Interceptor]:
    return [StepTelemetry()]
