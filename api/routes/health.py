"""Liveness and readiness; no authentication, so orchestrators can probe them."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api.deps import EngineDep, TemporalClientDep

router = APIRouter(tags=["health"])

PROBE_TIMEOUT_SECONDS = 2.0


@router.get("/healthz")
async def read_health() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz")
async def read_readiness(engine: EngineDep, temporal: TemporalClientDep) -> JSONResponse:
    """Ready when Temporal and the database both answer; says which does not."""
    checks: dict[str, Any] = {}
    try:
        await asyncio.wait_for(temporal.service_client.check_health(), PROBE_TIMEOUT_SECONDS)
        checks["temporal"] = "ok"
    except Exception as exc:  # any failure means not ready; the reason is the answer
        checks["temporal"] = f"unavailable: {type(exc).__name__}"

    def ping_database() -> None:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    try:
        await asyncio.wait_for(asyncio.to_thread(ping_database), PROBE_TIMEOUT_SECONDS)
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"unavailable: {type(exc).__name__}"
    ready = all(value == "ok" for value in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "not_ready", "checks": checks},
        status_code=200 if ready else 503,
        headers=None if ready else {"Retry-After": "5"},
    )
