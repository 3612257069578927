"""Long conversations: continue-as-new with a compact state, across which turns are neither lost,
repeated nor reordered; and one conversation of 3,000 turns."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from typing import Any

import httpx
import pytest
from temporalio.client import Client
from temporalio.worker import Worker

from api import create_app
from dialogue.platform.settings import Settings
from dialogue.platform.temporal import conversation_key, workflow_id
from tests.conftest import TEST_PAYLOAD_KEYS, api_client


async def runs_of(client: Client, conversation_id: str) -> list[int]:
    """The history length of each run of the conversation's workflow, oldest first."""
    lengths = [
        execution.history_length
        async for execution in client.list_workflows(
            f"WorkflowId = '{workflow_id(conversation_key('default', conversation_id))}'"
        )
    ]
    return list(reversed(lengths))


@pytest.fixture
def short_runs(settings: Settings) -> Settings:
    return settings.model_copy(update={"turns_per_run": 3})


async def test_state_and_turns_cross_continue_as_new(
    short_runs: Settings, client: Client, worker: Worker
) -> None:
    conversation = f"lc-{uuid.uuid4().hex[:8]}"
    url = f"/v1/conversations/{conversation}/turns"
    async with api_client(create_app(short_runs, temporal=client)) as http:
        for text in ["hello", "how much does express shipping cost?"]:
            assert (await http.post(url, json={"text": text})).status_code == 200
        asked = await http.post(url, json={"text": "where is my order?"}, headers={"Idempotency-Key": "ask"})
        assert asked.json()["turn_index"] == 2
        # Three turns: the run continued as new, carrying the open flow and its question.
        state = await _eventually_in_run(http, conversation, 2)
        assert state["active_flow"] == "order_lookup" and state["requested_slot"] == "order_id"
        assert state["intent_counts"]["order_status"] == 1 and "3 turns" in state["summary"]

        again = await http.post(url, json={"text": "where is my order?"}, headers={"Idempotency-Key": "ask"})
        assert again.json() == asked.json()  # retried across the boundary: the same reply, no new turn
        # Its status and events are still found, though Temporal keeps the update in the earlier run.
        status = (await http.get(f"{url}/ask")).json()
        assert status["status"] == "completed" and status["reply"] == asked.json()
        async with http.stream("GET", f"{url}/ask/events") as events:
            assert events.status_code == 200 and "event: final" in (await events.aread()).decode()
        answered = await http.post(url, json={"text": "it is NW-482913"})
        assert answered.json()["turn_index"] == 3 and "NW-482913" in answered.json()["reply"]["text"]

        # Turns sent 50 ms apart while earlier ones still run: several boundaries. Each is answered once,
        # in the order the workflow took them. (A turn that reaches a run in the instant it continues as
        # new is refused by the server and retried by the client into the next run, ~100 ms later: the
        # turns sent behind it in that time may be answered first. In 6 runs, 3 had one such turn.)
        sent = []
        for n in range(10):
            sent.append(asyncio.create_task(http.post(url, json={"text": f"hello number {n}"})))
            await asyncio.sleep(0.05)  # the pace of the load, not an ordering: no assertion relies on it
        replies = [(await task).json() for task in sent]
        assert sorted(r["turn_index"] for r in replies) == list(range(4, 14))
        assert [r["user_text"] for r in replies] == [f"hello number {n}" for n in range(10)]
        transcript = (await http.get(f"{url.removesuffix('/turns')}/messages", params={"limit": 200})).json()
        assert transcript["total"] == 28  # 14 turns, each recorded once
        assert [m["turn_index"] for m in transcript["items"]] == [i for i in range(14) for _ in (0, 1)]
        said = {m["turn_index"]: m["text"] for m in transcript["items"] if m["role"] == "user"}
        assert all(said[r["turn_index"]] == r["user_text"] for r in replies)  # each at the place it was given
    # `dialogue replay` fetches every run and replays each against the current code.
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIALOGUE_")} | {
        "DIALOGUE_TEMPORAL_ADDRESS": short_runs.temporal_address,
        "DIALOGUE_PAYLOAD_KEYS": TEST_PAYLOAD_KEYS.spec(),
        "DIALOGUE_DATA_DIR": str(short_runs.data_dir),
    }
    replayed = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "dialogue", "replay", conversation],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    lines = [line for line in replayed.stdout.splitlines() if "replayed" in line]
    assert len(lines) >= 3 and all("same decisions" in line for line in lines), replayed.stdout


async def _eventually_in_run(http: httpx.AsyncClient, conversation: str, run: int) -> dict[str, Any]:
    for _ in range(50):
        state: dict[str, Any] = (await http.get(f"/v1/conversations/{conversation}")).json()
        if state.get("run") == run:
            return state
        await asyncio.sleep(0.1)
    raise AssertionError(f"{conversation} never reached run {run}: {state}")


@pytest.mark.timeout(1500)  # 3,000 turns one after the other: minutes, not seconds
async def test_one_conversation_of_three_thousand_turns(
    settings: Settings, client: Client, worker: Worker
) -> None:
    conversation = f"lc-{uuid.uuid4().hex[:8]}"
    url = f"/v1/conversations/{conversation}/turns"
    texts = ["hello", "how much does express shipping cost?", "can I pay with PayPal?", "thanks"]
    async with api_client(create_app(settings, temporal=client)) as http:
        for n in range(3000):
            response = await http.post(url, json={"text": texts[n % len(texts)]})
            assert response.status_code == 200, response.text
            assert response.json()["turn_index"] == n and not response.json()["degraded"]
        state = (await http.get(f"/v1/conversations/{conversation}")).json()
        assert state["turn_count"] == 3000 and state["status"] == "active"
        messages = (await http.get(f"/v1/conversations/{conversation}/messages", params={"limit": 1})).json()
        assert messages["total"] == 6000
    runs = await runs_of(client, conversation)
    # A run continues as new after 200 turns, or sooner when Temporal suggests it (about 4,100 events
    # on the dev server, some 120 turns): every run's history stays far below Temporal's limits.
    assert len(runs) >= 3000 // settings.turns_per_run + 1
    assert max(runs) < 10_000, runs
