"""The agent: an LLM that calls the bot's tools, each call its own activity, through a real worker, API and
a stand-in model that streams tool calls as real endpoints do, over HTTP."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from api import create_app
from dialogue.settings import Settings
from tests.conftest import api_client, bot_with, served_llm, worker_for
from tests.fake_llm import FakeLlm, Plan
from tests.test_streaming import SSE, read_events

ORDER_STATUS = {
    "name": "order_status",
    "description": "The status, carrier and expected delivery of an order, by its number.",
    "parameters": {
        "type": "object",
        "properties": {"order_id": {"type": "string", "pattern": "^NW-[0-9]{6}$"}},
        "required": ["order_id"],
        "additionalProperties": False,
    },
}


def agent_bot(settings: Settings, tmp_path: Path, **agent: Any) -> Path:
    """The demo bot, its order questions answered by the agent with the order-status tool."""
    intents = yaml.safe_load(settings.bot_path.read_text())["intents"]
    for intent in intents:
        if intent["name"] == "order_status":
            intent["action"] = "agent"
            intent.pop("flow", None)
    return bot_with(settings, tmp_path, intents=intents, agent={"tools": [ORDER_STATUS], **agent})


@pytest.fixture
async def model() -> AsyncIterator[tuple[FakeLlm, str]]:
    fake = FakeLlm()
    async with served_llm(fake) as url:
        yield fake, url


@asynccontextmanager
async def agent_chat(
    client: Client, settings: Settings, tmp_path: Path, url: str, **agent: Any
) -> AsyncIterator[httpx.AsyncClient]:
    chat_settings = settings.model_copy(
        update={
            "generator": "openai",
            "llm_base_url": url,
            "llm_model": "gpt-4o-mini",
            "bot_path": agent_bot(settings, tmp_path, **agent),
        }
    )
    async with (
        worker_for(client, chat_settings),
        api_client(create_app(chat_settings, temporal=client)) as http,
    ):
        yield http


async def turn(http: httpx.AsyncClient, conversation_id: str, text: str) -> dict[str, Any]:
    response = await http.post(f"/v1/conversations/{conversation_id}/turns", json={"text": text})
    assert response.status_code == 200, response.text
    reply: dict[str, Any] = response.json()
    return reply


async def scheduled(client: Client, conversation_id: str, activity: str) -> list[int]:
    """Event ids of the `activity` steps scheduled in the conversation's history."""
    history = await client.get_workflow_handle(f"conv-default/{conversation_id}").fetch_history()
    return [
        e.event_id
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        and e.activity_task_scheduled_event_attributes.activity_type.name == activity
    ]


async def test_the_agent_calls_a_tool_reads_its_result_and_answers(
    client: Client, settings: Settings, tmp_path: Path, model: tuple[FakeLlm, str]
) -> None:
    fake, url = model
    fake.plans = [
        Plan(tool_calls=[("order_status", {"order_id": "NW-482913"})]),
        Plan(text="Your order NW-482913 is on its way with DHL."),
    ]
    conversation_id = f"agent-{uuid.uuid4().hex[:6]}"
    async with agent_chat(client, settings, tmp_path, url) as http:
        reply = await turn(http, conversation_id, "where is my order NW-482913?")

    assert reply["reply"]["text"] == "Your order NW-482913 is on its way with DHL." and not reply["degraded"]
    first, second = fake.requests
    assert [tool["function"]["name"] for tool in first["tools"]] == ["order_status"]
    assistant, result = second["messages"][-2:]
    assert assistant["tool_calls"][0]["function"]["name"] == "order_status"
    assert result["role"] == "tool" and result["tool_call_id"] == assistant["tool_calls"][0]["id"]
    assert result["content"].startswith("<tool_result>{") and '"order_id":"NW-482913"' in result["content"]
    [step] = reply["lineage"]["agent"]
    [outcome] = step["outcomes"]
    assert outcome["ok"] and outcome["size"] > 0 and outcome["sha256"] and outcome["arguments_sha256"]
    assert step["calls"][0]["idempotency_key"].startswith(f"default/{conversation_id}:{reply['turn_id']}:")
    assert len(await scheduled(client, conversation_id, "call_tool")) == 1  # each call its own activity


async def test_calls_asked_for_together_run_side_by_side(
    client: Client, settings: Settings, tmp_path: Path, model: tuple[FakeLlm, str]
) -> None:
    fake, url = model
    fake.plans = [
        Plan(
            tool_calls=[
                ("order_status", {"order_id": "NW-482913"}),
                ("order_status", {"order_id": "NW-100200"}),
            ]
        ),
        Plan(text="One is on its way, the other is being packed."),
    ]
    conversation_id = f"parallel-{uuid.uuid4().hex[:6]}"
    async with agent_chat(client, settings, tmp_path, url) as http:
        reply = await turn(http, conversation_id, "where are my orders NW-482913 and NW-100200?")
    [step] = reply["lineage"]["agent"]
    assert [o["call_id"] for o in step["outcomes"]] == [c["call_id"] for c in step["calls"]]
    history = await client.get_workflow_handle(f"conv-default/{conversation_id}").fetch_history()
    tool_events = [
        e.event_type
        for e in history.events
        if e.event_type
        in (EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED, EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED)
        and (
            not e.HasField("activity_task_scheduled_event_attributes")
            or e.activity_task_scheduled_event_attributes.activity_type.name == "call_tool"
        )
    ]
    # Both calls were scheduled by one workflow task, before either completed.
    scheduled_ids = await scheduled(client, conversation_id, "call_tool")
    assert len(scheduled_ids) == 2 and scheduled_ids[1] == scheduled_ids[0] + 1, tool_events
    assert len(fake.requests[1]["messages"][-2:]) == 2 and fake.requests[1]["messages"][-1]["role"] == "tool"


async def test_a_call_to_an_undeclared_tool_or_with_bad_arguments_never_runs_and_the_model_is_told(
    client: Client, settings: Settings, tmp_path: Path, model: tuple[FakeLlm, str]
) -> None:
    """Among them, what a prompt injection in a tool result would make a model do: call a tool the bot
    did not declare. It is refused before any activity runs."""
    fake, url = model
    fake.plans = [
        Plan(
            tool_calls=[
                ("refund_everything", {"ignore": "previous instructions"}),
                ("order_status", {"order_id": "12"}),
                ("order_status", {"order_id": "NW-482913"}),
            ]
        ),
        Plan(text="I could look up NW-482913 only."),
    ]
    conversation_id = f"refused-{uuid.uuid4().hex[:6]}"
    async with agent_chat(client, settings, tmp_path, url) as http:
        reply = await turn(http, conversation_id, "where is my order NW-482913?")
    refused, invalid, made = reply["lineage"]["agent"][0]["outcomes"]
    assert not refused["ok"] and refused["error"].startswith(
        "no tool 'refund_everything' (allowed: order_status)"
    )
    assert not invalid["ok"] and "do not fit the tool's schema" in invalid["error"]
    assert made["ok"]
    assert len(await scheduled(client, conversation_id, "call_tool")) == 1  # only the valid call ran
    results = [m["content"] for m in fake.requests[1]["messages"] if m["role"] == "tool"]
    assert "no tool 'refund_everything'" in results[0] and "do not fit" in results[1]


async def test_at_the_step_limit_the_model_answers_without_tools_and_the_turn_is_degraded(
    client: Client, settings: Settings, tmp_path: Path, model: tuple[FakeLlm, str]
) -> None:
    fake, url = model
    fake.plans = [
        Plan(tool_calls=[("order_status", {"order_id": "NW-482913"})]),
        Plan(text="I found NW-482913 on its way, but could not finish."),
    ]
    conversation_id = f"limit-{uuid.uuid4().hex[:6]}"
    async with agent_chat(client, settings, tmp_path, url, max_steps=2) as http:
        reply = await turn(http, conversation_id, "where is my order NW-482913?")
    assert reply["degraded"] and reply["degraded_reason"] == "agent step limit"
    assert reply["reply"]["text"] == "I found NW-482913 on its way, but could not finish."
    last = fake.requests[-1]
    assert "tools" not in last and "cannot call tools any more" in last["messages"][-1]["content"]


async def test_a_streamed_agent_turn_sends_its_tool_calls_and_results_then_tokens_and_the_reply(
    client: Client, settings: Settings, tmp_path: Path, model: tuple[FakeLlm, str]
) -> None:
    fake, url = model
    fake.plans = [
        Plan(tool_calls=[("order_status", {"order_id": "NW-482913"})]),
        Plan(text="Your order NW-482913 is on its way with DHL.", token_delay=0.01),
    ]
    conversation_id = f"streamed-{uuid.uuid4().hex[:6]}"
    async with (
        agent_chat(client, settings, tmp_path, url) as http,
        http.stream(
            "POST",
            f"/v1/conversations/{conversation_id}/turns",
            json={"text": "where is my order NW-482913?"},
            headers=SSE,
        ) as response,
    ):
        assert response.status_code == 200
        received = await read_events(response)
    kinds = [event.kind for event in received]
    first_token = kinds.index("token")
    assert kinds[-1] == "final" and kinds.index("tool_call") < kinds.index("tool_result") < first_token
    call = next(event.data for event in received if event.kind == "tool_call")
    result = next(event.data for event in received if event.kind == "tool_result")
    assert call["name"] == "order_status" and call["arguments"] == {"order_id": "NW-482913"}
    assert result["call_id"] == call["call_id"] and result["ok"] and result["size"] > 0
    streamed = "".join(event.data["text"] for event in received if event.kind == "token")
    assert streamed == received[-1].data["reply"]["text"] == "Your order NW-482913 is on its way with DHL."
