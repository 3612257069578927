"""Turns that take long: double-texting (409 or queued, bounded by 429), async turns, the API's wait, the turn deadline."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import UpdateWorkflowExecutionLifecycleStage
from temporalio.api.update.v1 import UpdateRef, WaitPolicy
from temporalio.api.workflowservice.v1 import PollWorkflowExecutionUpdateRequest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Worker

from api import create_app
from dialogue.platform.settings import Settings
from dialogue.platform.temporal import conversation_key, workflow_id
from tests.conftest import api_client, served_llm
from tests.fake_llm import FakeLlm, Plan
from tests.waiting import eventually
from workflows.conversation import FALLBACK_TEXT

SLOW_QUESTION = "How much does express shipping cost?"  # answered by the (slow) LLM
ACCEPTED = UpdateWorkflowExecutionLifecycleStage.UPDATE_WORKFLOW_EXECUTION_LIFECYCLE_STAGE_ACCEPTED


@pytest.fixture
def slow_model() -> FakeLlm:
    """A model that answers after 1.5 s; it records each request as it arrives."""
    return FakeLlm(plans=[Plan(text="It costs 12.90 euros [1].", delay=1.5)])


@pytest.fixture
async def slow_llm(slow_model: FakeLlm) -> AsyncIterator[str]:
    async with served_llm(slow_model) as url:
        yield url


@pytest.fixture
def settings(settings: Settings, slow_llm: str) -> Settings:
    return settings.model_copy(
        update={"generator": "openai", "llm_base_url": slow_llm, "llm_model": "slow", "max_queued_turns": 2}
    )


async def model_asked(model: FakeLlm) -> None:
    """Until the model has the first turn's request: that turn is running."""
    await eventually(lambda: model.requests, "the model to be asked for the running turn")


async def turn_accepted(client: Client, conversation_id: str, turn_id: str) -> bool:
    """Whether the conversation's workflow has accepted the turn (running or queued), as Temporal says."""
    try:
        polled = await client.workflow_service.poll_workflow_execution_update(
            PollWorkflowExecutionUpdateRequest(
                namespace=client.namespace,
                update_ref=UpdateRef(
                    workflow_execution=WorkflowExecution(
                        workflow_id=workflow_id(conversation_key("default", conversation_id))
                    ),
                    update_id=turn_id,
                ),
                wait_policy=WaitPolicy(lifecycle_stage=ACCEPTED),
            ),
            timeout=timedelta(seconds=1),
        )
    except RPCError as err:  # not sent to the workflow yet, or not accepted within the poll
        if err.status not in (RPCStatusCode.NOT_FOUND, RPCStatusCode.DEADLINE_EXCEEDED):
            raise
        return False
    return polled.stage >= ACCEPTED


async def test_reject_answers_409_naming_the_running_turn(
    http: httpx.AsyncClient, slow_model: FakeLlm
) -> None:
    conversation_id = f"dt-{uuid.uuid4().hex[:8]}"
    created = await http.post("/v1/conversations", json={"id": conversation_id, "double_text": "reject"})
    assert created.status_code == 201
    url = f"/v1/conversations/{conversation_id}/turns"
    running = asyncio.create_task(
        http.post(url, json={"text": SLOW_QUESTION}, headers={"Idempotency-Key": "slow-1"})
    )
    await model_asked(slow_model)
    second = await http.post(url, json={"text": "hello"})
    assert second.status_code == 409, second.text
    assert second.json()["error"]["code"] == "turn_in_progress"
    assert "slow-1" in second.json()["error"]["message"]
    first = await running
    assert first.status_code == 200 and "12.90" in first.json()["reply"]["text"]
    after = await http.post(url, json={"text": "hello"})  # once it finished, the next turn is welcome
    assert after.status_code == 200 and after.json()["turn_index"] == 1


async def test_enqueue_answers_in_order_and_bounds_the_queue(
    http: httpx.AsyncClient, client: Client, slow_model: FakeLlm
) -> None:
    conversation_id = f"dt-{uuid.uuid4().hex[:8]}"
    url = f"/v1/conversations/{conversation_id}/turns"
    first = asyncio.create_task(http.post(url, json={"text": SLOW_QUESTION}))
    await model_asked(slow_model)
    second = asyncio.create_task(
        http.post(url, json={"text": "hello"}, headers={"Idempotency-Key": "queued"})
    )
    await eventually(lambda: turn_accepted(client, conversation_id, "queued"), "the second turn to be queued")
    third = await http.post(url, json={"text": "thanks"})
    assert third.status_code == 429, third.text
    assert third.json()["error"]["code"] == "turn_queue_full" and third.headers["retry-after"]
    replies = [(await first).json(), (await second).json()]
    assert [r["turn_index"] for r in replies] == [0, 1]
    assert "12.90" in replies[0]["reply"]["text"]


async def test_interrupt_cancels_the_running_turn_and_answers_the_newest(
    http: httpx.AsyncClient, slow_model: FakeLlm
) -> None:
    conversation_id = f"dt-{uuid.uuid4().hex[:8]}"
    created = await http.post("/v1/conversations", json={"id": conversation_id, "double_text": "interrupt"})
    assert created.status_code == 201
    url = f"/v1/conversations/{conversation_id}/turns"
    first = asyncio.create_task(http.post(url, json={"text": SLOW_QUESTION}))
    await model_asked(slow_model)  # the model is working on the first turn
    second = await http.post(url, json={"text": "hello"})
    interrupted = (await first).json()
    assert interrupted["interrupted"] and interrupted["reply"]["text"] == ""
    assert second.status_code == 200 and not second.json()["interrupted"] and second.json()["reply"]["text"]
    assert second.json()["turn_index"] == 1
    transcript = (await http.get(f"/v1/conversations/{conversation_id}/messages")).json()["items"]
    # Both of the user's words are kept; only the newest got a reply.
    assert [(m["turn_index"], m["role"]) for m in transcript] == [(0, "user"), (1, "user"), (1, "bot")]


async def test_an_async_turn_answers_202_and_its_reply_is_fetched_later(http: httpx.AsyncClient) -> None:
    base = f"/v1/conversations/dt-{uuid.uuid4().hex[:8]}"
    accepted = await http.post(f"{base}/turns", json={"text": SLOW_QUESTION, "wait": False})
    assert accepted.status_code == 202, accepted.text
    turn_id = accepted.json()["turn_id"]
    assert accepted.headers["location"] == f"{base}/turns/{turn_id}"

    first_response = await http.get(f"{base}/turns/{turn_id}")
    first_look = first_response.json()
    assert first_response.status_code == 200, first_response.text
    assert first_look["status"] == "running" and first_look["reply"] is None
    for _ in range(40):
        status = (await http.get(f"{base}/turns/{turn_id}")).json()
        if status["status"] == "completed":
            break
        await asyncio.sleep(0.25)
    assert status["status"] == "completed"
    assert "12.90" in status["reply"]["reply"]["text"] and status["reply"]["turn_id"] == turn_id

    unknown = await http.get(f"{base}/turns/no-such-turn")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "turn_not_found"


async def test_the_lineage_of_a_turn_still_running_waits_for_its_answer(http: httpx.AsyncClient) -> None:
    base = f"/v1/conversations/dt-{uuid.uuid4().hex[:8]}"
    accepted = await http.post(f"{base}/turns", json={"text": SLOW_QUESTION, "wait": False})
    turn_id = accepted.json()["turn_id"]
    lineage = await http.get(f"{base}/turns/{turn_id}/lineage")  # asked at once: the model is still slow
    assert lineage.status_code == 200, lineage.text
    assert "12.90" in lineage.json()["reply"] and lineage.json()["lineage"] is not None
    rated = await http.post(f"{base}/turns/{turn_id}/feedback", json={"rating": "up"})
    assert rated.status_code == 201
    unknown = await http.get(f"{base}/turns/no-such-turn/lineage")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "turn_not_found"


@pytest.fixture
def impatient_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"turn_timeout_seconds": 0.5})


async def test_a_reply_not_ready_in_time_is_504_naming_the_turn_to_retry(
    impatient_settings: Settings, client: Client, worker: Worker
) -> None:
    async with api_client(create_app(impatient_settings, temporal=client)) as http:
        url = f"/v1/conversations/dt-{uuid.uuid4().hex[:8]}/turns"
        late = await http.post(url, json={"text": SLOW_QUESTION}, headers={"Idempotency-Key": "late-1"})
        assert late.status_code == 504 and "late-1" in late.json()["error"]["message"]

        async def answered() -> bool:  # the slow model answers after 1.5 s
            status = await http.get(f"{url}/late-1")
            return bool(status.json()["status"] == "completed")

        await eventually(answered, "the late turn to be answered")
        again = await http.post(url, json={"text": SLOW_QUESTION}, headers={"Idempotency-Key": "late-1"})
        assert again.status_code == 200 and again.json()["turn_id"] == "late-1"  # the same turn, now answered
        assert again.json()["turn_index"] == 0


@pytest.fixture
def hasty_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"turn_deadline_seconds": 0.8})


async def test_past_its_deadline_a_turn_gets_a_degraded_fallback_and_the_next_one_works(
    hasty_settings: Settings, client: Client, worker: Worker
) -> None:
    async with api_client(create_app(hasty_settings, temporal=client)) as http:
        base = f"/v1/conversations/dt-{uuid.uuid4().hex[:8]}"
        late = (await http.post(f"{base}/turns", json={"text": SLOW_QUESTION})).json()
        assert late["degraded"] and late["degraded_reason"] == "deadline exceeded"
        assert late["reply"]["text"] == FALLBACK_TEXT
        assert late["timings_ms"]["total"] < 2000  # it did not wait for the 1.5 s model
        following = (await http.post(f"{base}/turns", json={"text": "hello"})).json()
        assert not following["degraded"] and following["turn_index"] == 1
        transcript = (await http.get(f"{base}/messages")).json()["items"]
        assert [m["degraded"] for m in transcript if m["role"] == "bot"] == [True, False]
