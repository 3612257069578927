"""A turn that arrives while another runs: rejected (409) or queued, and the queue is bounded (429)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from dialogue.settings import Settings
from tests.conftest import serve
from tests.fake_llm import FakeLlm, Plan

SLOW_QUESTION = "How much does express shipping cost?"  # answered by the (slow) LLM


@pytest.fixture
async def slow_llm() -> AsyncIterator[str]:
    fake = FakeLlm(plans=[Plan(text="It costs 12.90 euros [1].", delay=1.5)])
    server, task, base_url = await serve(fake.app())
    yield f"{base_url}/v1"
    server.should_exit = True
    await task


@pytest.fixture
def settings(settings: Settings, slow_llm: str) -> Settings:
    return settings.model_copy(
        update={"generator": "openai", "llm_base_url": slow_llm, "llm_model": "slow", "max_queued_turns": 2}
    )


async def test_reject_answers_409_naming_the_running_turn(http: httpx.AsyncClient) -> None:
    conversation_id = f"dt-{uuid.uuid4().hex[:8]}"
    created = await http.post("/v1/conversations", json={"id": conversation_id, "double_text": "reject"})
    assert created.status_code == 201
    url = f"/v1/conversations/{conversation_id}/turns"
    running = asyncio.create_task(
        http.post(url, json={"text": SLOW_QUESTION}, headers={"Idempotency-Key": "slow-1"})
    )
    await asyncio.sleep(0.5)
    second = await http.post(url, json={"text": "hello"})
    assert second.status_code == 409, second.text
    assert second.json()["error"]["code"] == "turn_in_progress"
    assert "slow-1" in second.json()["error"]["message"]
    first = await running
    assert first.status_code == 200 and "12.90" in first.json()["reply"]["text"]
    after = await http.post(url, json={"text": "hello"})  # once it finished, the next turn is welcome
    assert after.status_code == 200 and after.json()["turn_index"] == 1


async def test_enqueue_answers_in_order_and_bounds_the_queue(http: httpx.AsyncClient) -> None:
    url = f"/v1/conversations/dt-{uuid.uuid4().hex[:8]}/turns"
    first = asyncio.create_task(http.post(url, json={"text": SLOW_QUESTION}))
    await asyncio.sleep(0.4)
    second = asyncio.create_task(http.post(url, json={"text": "hello"}))
    await asyncio.sleep(0.4)
    third = await http.post(url, json={"text": "thanks"})
    assert third.status_code == 429, third.text
    assert third.json()["error"]["code"] == "turn_queue_full" and third.headers["retry-after"]
    replies = [(await first).json(), (await second).json()]
    assert [r["turn_index"] for r in replies] == [0, 1]
    assert "12.90" in replies[0]["reply"]["text"]
