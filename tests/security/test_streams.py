"""Event streams are bounded: per key and per tenant, in lifetime, and in what they cost the store (one
reader per conversation however many streams follow it).

Each attack runs against the real stack: the API served by uvicorn over real sockets, Temporal, a worker,
the store, and a stand-in model over real HTTP."""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY
from temporalio.client import Client
from temporalio.worker import Worker

from api import create_app
from dialogue.platform import events
from dialogue.platform.db import get_engine
from dialogue.platform.settings import Settings
from dialogue.platform.temporal import conversation_key
from dialogue.security.identity import DEFAULT_TENANT, create_key
from tests.conftest import TEST_API_KEY, free_port, served, served_llm
from tests.fake_llm import FakeLlm, Plan
from tests.processes import ApiProcess
from tests.waiting import eventually

SSE = {"Accept": "text/event-stream"}
QUESTION = "How much does express shipping cost?"  # answered by the model
Event = tuple[str, dict[str, Any], str | None]
"""An event as a stream sent it: its kind, its data and its id."""
LLM_TEXT = "Express shipping costs 12.90 euros and arrives the next working day, packed with care [1]."


@pytest.fixture
async def llm_url() -> AsyncIterator[str]:
    """A model that writes a token every 150 ms: a turn's events span a couple of seconds."""
    async with served_llm(FakeLlm(plans=[Plan(text=LLM_TEXT, token_delay=0.15)])) as url:
        yield url


@pytest.fixture
def settings(settings: Settings, llm_url: str) -> Settings:
    return settings.model_copy(
        update={"generator": "openai", "llm_base_url": llm_url, "llm_model": "streamer"}
    )


@asynccontextmanager
async def stack(
    client: Client, settings: Settings, **changes: Any
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The API with these settings changed, over real HTTP: the app, and a client of the default tenant's
    that opens as many connections as asked."""
    app = create_app(settings.model_copy(update=changes), temporal=client)
    async with (
        served(app) as base_url,
        httpx.AsyncClient(
            base_url=base_url,
            headers={"Authorization": f"Bearer {TEST_API_KEY}"},
            timeout=60,
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=None),
        ) as http,
    ):
        yield app, http


async def a_conversation(http: httpx.AsyncClient, headers: dict[str, str] | None = None) -> str:
    conversation_id = f"str-{uuid.uuid4().hex[:10]}"
    created = await http.post("/v1/conversations", json={"id": conversation_id}, headers=headers)
    assert created.status_code == 201, created.text
    return conversation_id


async def open_stream(
    http: httpx.AsyncClient, url: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    return await http.send(http.build_request("GET", url, headers=headers), stream=True)


async def test_a_key_opening_500_streams_gets_its_cap_and_other_keys_are_still_served(
    client: Client, settings: Settings, worker: Worker
) -> None:
    """One client key opens 500 streams on a conversation. Before: all 500 were served, each polling the
    store every 50 ms through the threads authentication needs, with no bound."""
    engine = get_engine(settings.resolved_database_url)
    greedy = {"Authorization": f"Bearer {create_key(engine, tenant='acme', scope='client')[1]}"}
    neighbour = {"Authorization": f"Bearer {create_key(engine, tenant='acme', scope='client')[1]}"}
    stranger = {"Authorization": f"Bearer {create_key(engine, tenant='globex', scope='client')[1]}"}
    async with stack(client, settings, max_streams_per_key=10, max_streams_per_tenant=12) as (_, http):
        conversation_id = await a_conversation(http, greedy)
        url = f"/v1/conversations/{conversation_id}/events"
        streams = await asyncio.gather(*(open_stream(http, url, greedy) for _ in range(500)))
        # Another key of the same tenant: streams up to the tenant's cap, and its turns.
        neighbours = [await open_stream(http, url, neighbour) for _ in range(3)]
        turn = await http.post(
            f"/v1/conversations/{conversation_id}/turns", json={"text": "hello"}, headers=neighbour
        )
        # Another tenant's key: its own caps.
        theirs = await a_conversation(http, stranger)
        stranger_stream = await open_stream(http, f"/v1/conversations/{theirs}/events", stranger)
        refused = [s for s in streams if s.status_code != 200]
        for response in refused + neighbours[2:]:
            await response.aread()
        for response in [*streams, *neighbours, stranger_stream]:
            await response.aclose()
    assert sum(s.status_code == 200 for s in streams) == 10
    assert {(r.status_code, r.json()["error"]["code"], r.headers["Retry-After"]) for r in refused} == {
        (429, "too_many_streams", "10")
    }
    assert "this key has 10" in refused[0].json()["error"]["message"]
    assert [s.status_code for s in neighbours] == [200, 200, 429]
    assert "this tenant has 12" in neighbours[2].json()["error"]["message"]
    assert turn.status_code == 200, turn.text
    assert stranger_stream.status_code == 200


async def read_until_closed(response: httpx.Response, into: list[Event]) -> None:
    """The events of one connection, as (kind, data, id), until the server ends it."""
    fields: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line:
            if not line.startswith(":"):
                name, _, value = line.partition(": ")
                fields[name] = value
            continue
        if "data" in fields:
            into.append((fields.get("event", "message"), orjson.loads(fields["data"]), fields.get("id")))
        fields = {}


async def test_a_stream_ends_at_its_lifetime_and_resumes_with_last_event_id_missing_nothing(
    client: Client, settings: Settings, worker: Worker
) -> None:
    """A conversation's stream lives 1 s here; a streamed turn's events span more. Before: a stream never
    ended (one open connection held for ever, past a key's revocation and the API's stop)."""
    engine = get_engine(settings.resolved_database_url)
    async with stack(client, settings, stream_max_seconds=1) as (_, http):
        conversation_id = await a_conversation(http)
        key = conversation_key(DEFAULT_TENANT, conversation_id)
        url = f"/v1/conversations/{conversation_id}/events"
        seen: list[Event] = []
        turn: asyncio.Task[httpx.Response] | None = None
        final: list[str] = []  # the turn's last event's id, once it is answered

        def followed_to_the_end() -> bool:
            if turn is None or not turn.done():
                return False
            final[:] = final or [str(events.last(engine, key))]
            return bool(seen) and seen[-1][2] == final[0]

        def ended(reader: asyncio.Task[None]) -> bool:
            return reader.done() or followed_to_the_end()

        connections = 0
        while not followed_to_the_end():
            # The first connection starts from now; each next one resumes after the last id it saw.
            last_id = next((event_id for _, _, event_id in reversed(seen) if event_id is not None), None)
            async with http.stream(
                "GET",
                url,
                headers={"Last-Event-ID": last_id} if last_id else None,
                params=None if last_id else {"from_now": "true"},
            ) as response:
                assert response.status_code == 200
                connections += 1
                if turn is None:
                    turn = asyncio.create_task(
                        http.post(
                            f"/v1/conversations/{conversation_id}/turns", json={"text": QUESTION}, headers=SSE
                        )
                    )
                reader = asyncio.create_task(read_until_closed(response, seen))
                # Until the server ends the stream (its lifetime), or everything of the turn has come.
                await eventually(functools.partial(ended, reader), "the stream's end", within=60)
                reader.cancel()
        assert turn is not None and (await turn).status_code == 200
    assert seen[0][0] == "open"
    logged = events.read(engine, key, after=int(seen[0][2] or 0))
    assert [int(event_id or 0) for kind, _, event_id in seen[1:]] == [row.seq for row in logged]
    assert "".join(data["text"] for kind, data, _ in seen if kind == "token") == LLM_TEXT
    assert connections >= 2  # the first ended while the turn was still running


async def test_streams_on_one_conversation_share_one_reader_of_the_event_log(
    client: Client, settings: Settings, worker: Worker
) -> None:
    """20 streams follow one conversation. Before: each polled the store by itself every 50 ms (20 readers);
    now one reader per conversation feeds them all, and stops when the last leaves."""
    readers_before = REGISTRY.get_sample_value("dialogue_event_feeds") or 0
    async with stack(client, settings) as (app, http):
        conversation_id = await a_conversation(http)
        key = conversation_key(DEFAULT_TENANT, conversation_id)
        url = f"/v1/conversations/{conversation_id}/events"
        streams = await asyncio.gather(*(open_stream(http, url) for _ in range(20)))
        feeds = app.state.event_feeds
        await eventually(lambda: feeds.subscribers(key) == 20, "all 20 streams subscribed")
        assert feeds.readers == 1 and feeds.readers_started == 1
        assert REGISTRY.get_sample_value("dialogue_event_feeds") == readers_before + 1

        turn = await http.post(
            f"/v1/conversations/{conversation_id}/turns", json={"text": QUESTION}, headers=SSE
        )
        assert turn.status_code == 200
        final = str(events.last(get_engine(settings.resolved_database_url), key))
        received: list[list[Event]] = [[] for _ in streams]
        readers = [
            asyncio.create_task(read_until_closed(s, into)) for s, into in zip(streams, received, strict=True)
        ]
        await eventually(
            lambda: all(into and into[-1][2] == final for into in received),
            "the turn's events in every stream",
        )
        for reader in readers:
            reader.cancel()
        for stream in streams:
            await stream.aclose()
        await eventually(lambda: feeds.readers == 0, "the reader stopped after the last stream left")
    assert len({tuple(e[2] for e in into) for into in received}) == 1  # every stream saw the same events
    assert feeds.readers_started == 1


async def test_an_open_stream_does_not_keep_the_api_from_stopping(
    client: Client, settings: Settings, worker: Worker, tmp_path: Path
) -> None:
    """`dialogue api` in its own process, as deployed, is stopped (SIGTERM) while a client holds a
    conversation's stream open. Before: uvicorn had no graceful-shutdown timeout and waited for the stream,
    which never ends by itself, so the API never stopped."""
    api = ApiProcess(
        settings.model_copy(update={"api_port": free_port(), "shutdown_timeout_seconds": 1}),
        tmp_path / "api.log",
    )
    await api.start()
    try:
        async with httpx.AsyncClient(
            base_url=api.base_url, headers={"Authorization": f"Bearer {TEST_API_KEY}"}, timeout=60
        ) as http:
            conversation_id = await a_conversation(http)
            async with http.stream("GET", f"/v1/conversations/{conversation_id}/events") as stream:
                assert stream.status_code == 200
                assert api.process is not None
                api.process.terminate()
                await asyncio.wait_for(api.process.wait(), timeout=30)
    finally:
        if api.process is not None and api.process.returncode is None:
            api.process.kill()
            await api.process.wait()
