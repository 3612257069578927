"""Streamed turns over real HTTP: server-sent events from the worker's event log, resumable by `Last-Event-ID`."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest

from dialogue.platform.settings import Settings
from tests.conftest import served_llm
from tests.fake_llm import FakeLlm, Plan

LLM_TEXT = "Express shipping costs 12.90 euros and arrives the next working day [1]."
QUESTION = "How much does express shipping cost?"
SSE = {"Accept": "text/event-stream"}


@dataclass
class Event:
    kind: str
    data: dict[str, Any]
    id: str | None
    received_at: float


async def read_events(
    response: httpx.Response, limit: int | None = None, *, into: list[Event] | None = None
) -> list[Event]:
    """Parse an SSE body; stop after `limit` events (the client then drops the connection). Each event is
    appended to `into` as it arrives, if given: a test can wait for one while the stream goes on."""
    received: list[Event] = [] if into is None else into
    fields: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line:
            if not line.startswith(":"):
                name, _, value = line.partition(": ")
                fields[name] = value
            continue
        if "data" in fields:
            received.append(
                Event(
                    fields.get("event", "message"),
                    orjson.loads(fields["data"]),
                    fields.get("id"),
                    time.time(),
                )
            )
            if limit is not None and len(received) >= limit:
                break
        fields = {}
    return received


@pytest.fixture
async def llm_url() -> AsyncIterator[str]:
    """A model that writes a token every 50 ms."""
    async with served_llm(FakeLlm(plans=[Plan(text=LLM_TEXT, token_delay=0.05)])) as url:
        yield url


@pytest.fixture
def settings(settings: Settings, llm_url: str) -> Settings:
    return settings.model_copy(
        update={"generator": "openai", "llm_base_url": llm_url, "llm_model": "streamer"}
    )


async def test_a_streamed_turn_sends_nlu_sources_tokens_then_the_reply(http: httpx.AsyncClient) -> None:
    url = f"/v1/conversations/st-{uuid.uuid4().hex[:8]}/turns"
    async with http.stream("POST", url, json={"text": QUESTION}, headers=SSE) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = await read_events(response)
    kinds = [e.kind for e in events]
    assert kinds[:2] == ["nlu", "sources"] and kinds[-1] == "final", kinds
    assert events[0].data["intent"]["name"] == "shipping_info"
    assert events[1].data["passages"], "the sources event lists the passages found"
    tokens = [e for e in events if e.kind == "token"]
    assert len(tokens) == len(LLM_TEXT.split(" "))
    assert "".join(t.data["text"] for t in tokens) == LLM_TEXT
    final = events[-1].data
    assert LLM_TEXT in final["reply"]["text"] and not final["degraded"]
    numbers = [int(e.id) for e in events[:-1] if e.id]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    assert events[-1].id == f"{numbers[-1]}-final"
    # Produced 50 ms apart, the tokens arrive spread out, not in one lump at the end.
    assert tokens[-1].received_at - tokens[0].received_at > 0.5


async def test_a_client_that_reconnects_with_last_event_id_misses_nothing_and_sees_nothing_twice(
    http: httpx.AsyncClient,
) -> None:
    conversation = f"st-{uuid.uuid4().hex[:8]}"
    url = f"/v1/conversations/{conversation}/turns"
    key = f"resume-{uuid.uuid4().hex[:8]}"
    headers = {**SSE, "Idempotency-Key": key}
    async with http.stream("POST", url, json={"text": QUESTION}, headers=headers) as response:
        first = await read_events(response, limit=5)  # then the connection drops mid-reply
    assert [e.kind for e in first][:2] == ["nlu", "sources"] and first[-1].kind == "token"

    # The same POST again (same key) with Last-Event-ID: the same turn, from where it left off.
    resumed_headers = {**headers, "Last-Event-ID": str(first[-1].id)}
    async with http.stream("POST", url, json={"text": QUESTION}, headers=resumed_headers) as response:
        rest = await read_events(response)
    assert rest[-1].kind == "final"
    ids = [e.id for e in first + rest[:-1]]
    assert len(ids) == len(set(ids))
    text = "".join(e.data["text"] for e in first + rest if e.kind == "token")
    assert text == LLM_TEXT

    # An EventSource reconnects by GET with the same header; after the final event it gets 204.
    async with http.stream(
        "GET",
        f"/v1/conversations/{conversation}/turns/{key}/events",
        headers={"Last-Event-ID": str(first[1].id)},
    ) as response:
        again = await read_events(response)
    assert [e.id for e in again] == [e.id for e in first[2:] + rest]
    done = await http.get(
        f"/v1/conversations/{conversation}/turns/{key}/events", headers={"Last-Event-ID": str(rest[-1].id)}
    )
    assert done.status_code == 204
    # One turn for all of it.
    messages = (await http.get(f"/v1/conversations/{conversation}/messages")).json()
    assert messages["total"] == 2


async def test_following_an_unknown_turn_is_404(http: httpx.AsyncClient) -> None:
    conversation = f"st-{uuid.uuid4().hex[:8]}"
    assert (
        await http.post(f"/v1/conversations/{conversation}/turns", json={"text": "hello"})
    ).status_code == 200
    response = await http.get(f"/v1/conversations/{conversation}/turns/nope/events")
    assert response.status_code == 404 and response.json()["error"]["code"] == "turn_not_found"


async def test_a_template_reply_streams_word_by_word(http: httpx.AsyncClient) -> None:
    url = f"/v1/conversations/st-{uuid.uuid4().hex[:8]}/turns"
    async with http.stream("POST", url, json={"text": "hello"}, headers=SSE) as response:
        events = await read_events(response)
    final = events[-1]
    assert final.kind == "final"
    tokens = "".join(e.data["text"] for e in events if e.kind == "token")
    assert tokens == final.data["reply"]["text"] and len([e for e in events if e.kind == "token"]) > 1


async def test_a_rejected_streamed_turn_is_a_plain_http_error(http: httpx.AsyncClient) -> None:
    url = f"/v1/conversations/st-{uuid.uuid4().hex[:8]}/turns"
    response = await http.post(url, json={"text": "   "}, headers=SSE)
    assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_request"
