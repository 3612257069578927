"""`/readyz` needs no key: a flood of it must not become a flood of store and Temporal probes."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import event
from temporalio.client import Client
from temporalio.worker import Worker

from api import create_app
from dialogue.platform.db import get_engine
from dialogue.platform.settings import Settings
from tests.conftest import api_client


async def test_a_flood_of_readiness_checks_probes_the_store_once(
    client: Client, settings: Settings, worker: Worker
) -> None:
    probes = 0

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        nonlocal probes
        probes += statement.strip() == "SELECT 1"  # the readiness probe's query, counted in the store itself

    engine = get_engine(settings.resolved_database_url)  # the very engine the API uses (one per URL)
    event.listen(engine, "before_cursor_execute", count)
    try:
        app = create_app(settings.model_copy(update={"readiness_cache_seconds": 600}), temporal=client)
        async with api_client(app, api_key="") as http:
            http.headers.pop("Authorization")
            answers = await asyncio.gather(*(http.get("/readyz") for _ in range(50)))
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert [a.status_code for a in answers] == [200] * 50, answers[0].text
    assert {a.json()["status"] for a in answers} == {"ready"}
    assert probes == 1


async def test_without_the_cache_each_check_probes(
    client: Client, settings: Settings, worker: Worker
) -> None:
    """The control: the count above sees every probe."""
    probes = 0

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        nonlocal probes
        probes += statement.strip() == "SELECT 1"

    engine = get_engine(settings.resolved_database_url)
    event.listen(engine, "before_cursor_execute", count)
    try:
        app = create_app(settings.model_copy(update={"readiness_cache_seconds": 0}), temporal=client)
        async with api_client(app) as http:
            for _ in range(3):
                assert (await http.get("/readyz")).status_code == 200
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert probes == 3
