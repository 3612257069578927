"""Turn admission cannot be taken from a tenant by others: callers without a valid key are refused before
their body is read and are never counted; a tenant that floods is shed, not the tenant beside it; and a
body that trickles is answered 408 and its slot freed.

Each attack runs against the real stack: the API served by uvicorn over real sockets, Temporal, a worker
and the store."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from prometheus_client import REGISTRY
from temporalio.client import Client
from temporalio.worker import Worker

from api import create_app
from dialogue.platform.db import get_engine
from dialogue.platform.settings import Settings
from dialogue.security.identity import create_key
from tests.conftest import TEST_API_KEY, served
from tests.slow_clients import SlowClient
from tests.waiting import eventually


def in_flight() -> float:
    return REGISTRY.get_sample_value("dialogue_turns_in_flight") or 0


def turn_path() -> str:
    return f"/v1/conversations/adm-{uuid.uuid4().hex[:10]}/turns"


@asynccontextmanager
async def stack(
    client: Client, settings: Settings, **changes: Any
) -> AsyncIterator[tuple[str, httpx.AsyncClient]]:
    """The API with these settings changed, over real HTTP: its base URL, and a client of the default
    tenant's (the bootstrap key's)."""
    app = create_app(settings.model_copy(update=changes), temporal=client)
    headers = {"Authorization": f"Bearer {TEST_API_KEY}"}
    async with (
        served(app) as base_url,
        httpx.AsyncClient(base_url=base_url, headers=headers, timeout=60) as http,
    ):
        yield base_url, http


async def test_unauthenticated_clients_trickling_turns_never_shed_a_tenants_turn(
    client: Client, settings: Settings, worker: Worker
) -> None:
    """300 clients, half with no key and half with a forged one, each send a turn's headers and a few bytes
    of its body, and no more. Before: they were counted as turns in flight before their key was checked
    (the body is read first), so the admission limit filled and a tenant's turn was answered 503."""
    async with stack(client, settings) as (base_url, http):
        before = in_flight()
        tricklers = [
            await SlowClient.start(
                base_url, turn_path(), headers={} if n % 2 else {"Authorization": "Bearer dk_forged-key"}
            )
            for n in range(300)
        ]
        answers = [asyncio.create_task(t.response()) for t in tricklers]
        try:
            # Each one answered, or admitted as a turn in flight, before the tenant's turn is sent.
            await eventually(
                lambda: sum(a.done() for a in answers) + in_flight() - before >= 300,
                "every trickler taken in",
            )
            turn = await http.post(turn_path(), json={"text": "hello"})
            refused = [a.result() for a in answers if a.done()]
        finally:
            for answer in answers:
                answer.cancel()
            for trickler in tricklers:
                await trickler.close()
    assert turn.status_code == 200, turn.text
    assert len(refused) == 300
    assert {(r.status_code, r.json()["error"]["code"]) for r in refused} == {
        (401, "unauthenticated"),
        (401, "invalid_credentials"),
    }
    assert in_flight() == before


async def test_a_tenant_that_floods_is_shed_and_the_tenant_beside_it_is_admitted(
    client: Client, settings: Settings, worker: Worker
) -> None:
    """acme holds the process's whole limit of turns in flight (its turns' bodies arrive slowly, so they
    stay in flight) and sends more. Before: the default tenant's turn was shed with acme's (503)."""
    _, acme_key = create_key(get_engine(settings.resolved_database_url), tenant="acme", scope="client")
    acme = {"Authorization": f"Bearer {acme_key}"}
    async with stack(
        client, settings, max_turns_in_flight=4, turn_queue_budget_seconds=0, body_read_seconds=120
    ) as (base_url, http):
        before = in_flight()
        flood = [await SlowClient.start(base_url, turn_path(), headers=acme) for _ in range(10)]
        answers = [asyncio.create_task(f.response()) for f in flood]
        await eventually(lambda: in_flight() - before == 4, "acme to hold the limit")
        await eventually(lambda: sum(a.done() for a in answers) == 6, "acme's turns past the limit answered")
        shed = [a.result() for a in answers if a.done()]
        assert {(r.status_code, r.json()["error"]["code"]) for r in shed} == {(503, "overloaded")}

        try:
            other = await http.post(turn_path(), json={"text": "hello"})
            more = await http.post(turn_path(), json={"text": "hello"}, headers=acme)
        finally:
            for answer in answers:
                answer.cancel()
            for trickler in flood:
                await trickler.close()
        await eventually(lambda: in_flight() == before, "acme's held turns let go")
    assert other.status_code == 200, other.text
    assert (more.status_code, more.json()["error"]["code"]) == (503, "overloaded")


async def test_a_body_that_trickles_is_answered_408_and_its_slot_freed(
    client: Client, settings: Settings, worker: Worker
) -> None:
    """An authenticated client sends a few bytes of its turn and then nothing. Before: no deadline, so it
    held its connection and a turn's slot for as long as it liked, and got no answer."""
    async with stack(client, settings, body_read_seconds=1) as (base_url, http):
        before = in_flight()
        trickler = await SlowClient.start(
            base_url, turn_path(), headers={"Authorization": f"Bearer {TEST_API_KEY}"}
        )
        try:
            answer = await asyncio.wait_for(trickler.response(), timeout=30)
        finally:
            await trickler.close()
        await eventually(lambda: in_flight() == before, "its slot freed")
        after = await http.post(turn_path(), json={"text": "hello"})
    assert (answer.status_code, answer.json()["error"]["code"]) == (408, "request_timeout")
    assert after.status_code == 200
