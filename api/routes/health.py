"""Liveness and readiness; no authentication, so orchestrators can probe them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.engine import Engine
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client

from api.deps import EngineDep, SettingsDep, TemporalClientDep
from dialogue.platform.metrics import READINESS_PROBES
from dialogue.platform.settings import Settings

router = APIRouter(tags=["health"])

PROBE_TIMEOUT_SECONDS = 2.0


@router.get("/healthz")
async def read_health() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


class ReadinessCache:
    """The last readiness answer, shared by every caller of `/readyz` for `max_age` seconds.

    `/readyz` needs no key: without this, each anonymous call would cost a store connection and two
    Temporal calls. Callers arriving while a probe runs wait for it and share its answer.
    """

    def __init__(self, max_age: float) -> None:
        self._max_age = max_age
        self._lock = asyncio.Lock()
        self._answer: tuple[dict[str, Any], bool] | None = None
        self._at = 0.0

    async def answer(
        self, probe: Callable[[], Awaitable[tuple[dict[str, Any], bool]]]
    ) -> tuple[dict[str, Any], bool]:
        async with self._lock:
            if self._answer is None or time.monotonic() - self._at >= self._max_age:
                READINESS_PROBES.inc()
                self._answer = await probe()
                self._at = time.monotonic()
            return self._answer


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    checks: dict[str, str]
    """`temporal`, `database`, `worker`: `ok`, or why not."""


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={
        503: {"model": Readiness, "description": "Not ready: `checks` says which part does not answer."}
    },
)
async def read_readiness(
    request: Request, engine: EngineDep, temporal: TemporalClientDep, settings: SettingsDep
) -> JSONResponse:
    """Ready when Temporal and the database answer and a worker polls the task queue; says which does not.
    The probes run side by side, so the answer comes within one probe's time-out; they run at most once
    in `readiness_cache_seconds` whoever asks (`ReadinessCache`)."""
    cache: ReadinessCache = request.app.state.readiness
    checks, ready = await cache.answer(lambda: _probe(engine, temporal, settings))
    return JSONResponse(
        {"status": "ready" if ready else "not_ready", "checks": checks},
        status_code=200 if ready else 503,
        headers=None if ready else {"Retry-After": "5"},
    )


async def _probe(engine: Engine, temporal: Client, settings: Settings) -> tuple[dict[str, Any], bool]:
    """What each part says (`ok`, or why not), and whether all are ready."""

    async def temporal_health() -> str:
        await temporal.service_client.check_health()
        return "ok"

    def ping_database() -> str:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return "ok"

    names = ("temporal", "database", "worker")
    probes = (temporal_health(), asyncio.to_thread(ping_database), _worker_polling(temporal, settings))
    results = await asyncio.gather(
        *(asyncio.wait_for(probe, PROBE_TIMEOUT_SECONDS) for probe in probes), return_exceptions=True
    )
    # Any failure means not ready; the reason is the answer.
    checks: dict[str, Any] = {
        name: f"{'unknown' if name == 'worker' else 'unavailable'}: {type(result).__name__}"
        if isinstance(result, BaseException)
        else result
        for name, result in zip(names, results, strict=True)
    }
    return checks, all(value == "ok" for value in checks.values())


async def _worker_polling(temporal: Client, settings: Settings) -> str:
    """`ok` when a worker polled the conversations' task queue lately: without one, turns wait and time out."""
    described = await temporal.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=settings.temporal_namespace,
            task_queue=TaskQueue(name=settings.task_queue),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
        )
    )
    latest = max(
        (poller.last_access_time.ToMicroseconds() / 1e6 for poller in described.pollers), default=None
    )
    if latest is None:
        return f"no worker polls task queue {settings.task_queue!r}"
    age = time.time() - latest
    if age > settings.worker_poll_max_age_seconds:
        return f"no worker has polled task queue {settings.task_queue!r} for {age:.0f} s"
    return "ok"
