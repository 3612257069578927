"""Load shedding: past its limit of turns in flight the API refuses a new turn at once (503 `overloaded`
with `Retry-After`) instead of queueing it past its deadline, starts nothing for it, and counts it."""

from __future__ import annotations

import asyncio
import time
import uuid

from prometheus_client import REGISTRY
from temporalio.client import Client

from api import create_app
from dialogue.platform.settings import Settings
from tests.conftest import api_client, served_llm, worker_for
from tests.fake_llm import FakeLlm, Plan
from tests.waiting import eventually

QUESTION = "How much does express shipping cost?"  # answered by the (slow) model


async def test_turns_past_the_limit_are_refused_at_once_and_nothing_is_started_for_them(
    client: Client, settings: Settings
) -> None:
    slow = FakeLlm(plans=[Plan(text="It costs 12.90 euros [1].", delay=2.0)])
    async with served_llm(slow) as url:
        limited = settings.model_copy(
            update={"generator": "openai", "llm_base_url": url, "llm_model": "slow", "max_turns_in_flight": 2}
        )
        shed_before = REGISTRY.get_sample_value("dialogue_turns_shed_total") or 0
        run = uuid.uuid4().hex[:6]
        async with worker_for(client, limited), api_client(create_app(limited, temporal=client)) as http:
            ids = [f"shed-{run}-{n}" for n in range(6)]
            responses = await asyncio.gather(
                *(http.post(f"/v1/conversations/{i}/turns", json={"text": QUESTION}) for i in ids)
            )
            refused = [i for i, r in zip(ids, responses, strict=True) if r.status_code == 503]
            states = [await http.get(f"/v1/conversations/{i}") for i in refused]
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 200, 503, 503, 503, 503], [r.text for r in responses]
    for response in responses:
        if response.status_code == 503:
            assert response.json()["error"]["code"] == "overloaded"
            assert response.headers["Retry-After"] == "1"
    # Nothing was started for a refused turn: its conversation does not exist.
    assert [s.status_code for s in states] == [404] * 4
    assert (REGISTRY.get_sample_value("dialogue_turns_shed_total") or 0) == shed_before + 4
    assert REGISTRY.get_sample_value("dialogue_turns_in_flight") == 0


async def test_the_admission_limit_follows_the_rate_the_stack_answers_at(
    client: Client, settings: Settings
) -> None:
    """With a queueing budget, a process admits what the stack answered in that long at its recent rate:
    from a standing start the floor (16), then twice that once it has answered 16 turns (16 turns in a
    5-second window is 3.2 turns/s; a 10-second budget affords 32)."""
    slow = FakeLlm(plans=[Plan(text="It costs 12.90 euros [1].", delay=0.5)])
    async with served_llm(slow) as url:
        budgeted = settings.model_copy(
            update={
                "generator": "openai",
                "llm_base_url": url,
                "llm_model": "slow",
                "turn_queue_budget_seconds": 10,
                "turn_admission_floor": 16,
            }
        )
        run = uuid.uuid4().hex[:6]

        async def burst(name: str) -> list[int]:
            responses = await asyncio.gather(
                *(
                    http.post(f"/v1/conversations/{name}-{run}-{n}/turns", json={"text": QUESTION})
                    for n in range(40)
                )
            )
            return [r.status_code for r in responses]

        async with worker_for(client, budgeted), api_client(create_app(budgeted, temporal=client)) as http:
            first = await burst("first")
            # The API counts a turn answered once its response is sent (a turn in flight until then), in
            # whole seconds of its monotonic clock: once the second of the last answer is over, all count.
            await eventually(
                lambda: REGISTRY.get_sample_value("dialogue_turns_in_flight") == 0, "every answer counted"
            )
            answered_in = int(time.monotonic())
            await eventually(lambda: int(time.monotonic()) > answered_in, "the second they were answered in")
            second = await burst("second")
    assert (first.count(200), first.count(503)) == (16, 24)
    assert (second.count(200), second.count(503)) == (32, 8)
    assert REGISTRY.get_sample_value("dialogue_turn_admission_limit") == 32


async def test_a_turn_sent_again_before_its_retry_after_is_held_until_then(
    client: Client, settings: Settings
) -> None:
    """A client that resends a shed turn at once is not refused again at once, as often as it likes: its
    turn waits in the API until its `Retry-After` has passed, then is admitted or shed as any other. A
    client that waits as told is never held."""
    slow = FakeLlm(plans=[Plan(text="It costs 12.90 euros [1].", delay=2.0)])
    async with served_llm(slow) as url:
        limited = settings.model_copy(
            update={"generator": "openai", "llm_base_url": url, "llm_model": "slow", "max_turns_in_flight": 1}
        )
        run = uuid.uuid4().hex[:6]
        turn = f"/v1/conversations/held-{run}/turns"
        key = {"Idempotency-Key": f"held-{run}"}
        async with worker_for(client, limited), api_client(create_app(limited, temporal=client)) as http:
            running = asyncio.create_task(
                http.post(f"/v1/conversations/busy-{run}/turns", json={"text": QUESTION})
            )
            await eventually(lambda: slow.requests, "the model to be asked for the running turn")
            early_before = REGISTRY.get_sample_value("dialogue_turns_resent_early_total") or 0
            shed = await http.post(turn, json={"text": "hello"}, headers=key)
            # At once, as a client that ignores Retry-After: held, then shed again (the running turn
            # takes two seconds).
            again = await http.post(turn, json={"text": "hello"}, headers=key)
            early_after_resending = REGISTRY.get_sample_value("dialogue_turns_resent_early_total") or 0
            assert (await running).status_code == 200
            await asyncio.sleep(float(again.headers["Retry-After"]))  # as told
            answered = await http.post(turn, json={"text": "hello"}, headers=key)
    assert [shed.status_code, again.status_code] == [503, 503], [shed.text, again.text]
    assert again.json()["error"]["code"] == "overloaded"
    assert early_after_resending == early_before + 1
    assert answered.status_code == 200, answered.text
    assert (REGISTRY.get_sample_value("dialogue_turns_resent_early_total") or 0) == early_before + 1
