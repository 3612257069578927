"""The agent: an LLM that calls the bot's tools, each call its own activity, through a real worker, API and
a stand-in model that streams tool calls as real endpoints do, over HTTP."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import REGISTRY
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from api import create_app
from dialogue.brain.agent.declarations import idempotency_key
from dialogue.platform.db import get_engine
from dialogue.platform.settings import Settings
from dialogue.security.identity import create_key
from tests.conftest import api_client, bot_with, demo_shop, worker_for
from tests.fake_llm import FakeLlm, Plan
from tests.processes import WorkerProcess
from tests.test_streaming import SSE, read_events
from tests.turns import wait_until
from workflows.replay import replay

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

START_RETURN = {
    "name": "start_return",
    "description": "Open a return for a delivered order.",
    "parameters": {
        "type": "object",
        "properties": {"order_id": {"type": "string"}, "reason": {"type": "string"}},
        "required": ["order_id"],
    },
    "approval": "agent",
}
CHANGE_ADDRESS = {
    "name": "change_address",
    "description": "Change the delivery address of an order not yet shipped.",
    "parameters": {
        "type": "object",
        "properties": {"order_id": {"type": "string"}, "address": {"type": "string"}},
        "required": ["order_id", "address"],
    },
    "approval": "user",
}
TOOLS = [ORDER_STATUS, START_RETURN, CHANGE_ADDRESS]
demo = demo_shop()


def agent_bot(settings: Settings, tmp_path: Path, **agent: Any) -> Path:
    """The demo bot in agent mode: its order questions (action `agent`), returns and address changes
    (`agent.intents`) and whatever it is unsure of go to the agent, with the order-status tool."""
    intents = yaml.safe_load(settings.bot_path.read_text())["intents"]
    for intent in intents:
        if intent["name"] == "order_status":
            intent["action"] = "agent"
            intent.pop("flow", None)
    tools = agent.pop("tools", [ORDER_STATUS])
    privacy = agent.pop("privacy", None)
    return bot_with(
        settings,
        tmp_path,
        **({"privacy": privacy} if privacy is not None else {}),
        intents=intents,
        mode="agent",
        flags={"agent": True},
        agent={"tools": tools, "intents": ["returns", "change_address"], **agent},
    )


@dataclass
class Chat:
    http: httpx.AsyncClient
    """With the bootstrap key (admin: it may decide `agent` approvals)."""
    user: httpx.AsyncClient
    """With a client key of the same tenant: the user's own (it may decide `user` approvals only)."""
    settings: Settings


@asynccontextmanager
async def agent_stack(
    client: Client, settings: Settings, tmp_path: Path, url: str, **agent: Any
) -> AsyncIterator[Chat]:
    chat_settings = settings.model_copy(
        update={
            "generator": "openai",
            "llm_base_url": url,
            "llm_model": "gpt-4o-mini",
            "bot_path": agent_bot(settings, tmp_path, **agent),
        }
    )
    app = create_app(chat_settings, temporal=client)
    _, user_key = create_key(
        get_engine(chat_settings.resolved_database_url), tenant="default", scope="client"
    )
    async with (
        worker_for(client, chat_settings),
        api_client(app) as http,
        api_client(app, api_key=user_key) as user,
    ):
        yield Chat(http, user, chat_settings)


@asynccontextmanager
async def agent_chat(
    client: Client, settings: Settings, tmp_path: Path, url: str, **agent: Any
) -> AsyncIterator[httpx.AsyncClient]:
    async with agent_stack(client, settings, tmp_path, url, **agent) as chat:
        yield chat.http


async def turn(http: httpx.AsyncClient, conversation_id: str, text: str) -> dict[str, Any]:
    response = await http.post(f"/v1/conversations/{conversation_id}/turns", json={"text": text})
    assert response.status_code == 200, response.text
    reply: dict[str, Any] = response.json()
    return reply


def call_key(conversation_id: str, pending: dict[str, Any]) -> str:
    """The idempotency key a tool got for a call that waited for approval."""
    return idempotency_key(f"default/{conversation_id}", pending["turn_id"], pending["call_id"])


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
    counted = {"tool": "order_status", "outcome": "ok"}
    before = REGISTRY.get_sample_value("dialogue_agent_tool_calls_total", counted) or 0
    async with agent_chat(client, settings, tmp_path, url) as http:
        reply = await turn(http, conversation_id, "where is my order NW-482913?")
    assert REGISTRY.get_sample_value("dialogue_agent_tool_calls_total", counted) == before + 1

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
    assert outcome["attempt"] == 1 and outcome["duration_ms"] >= 0
    assert (
        step["model_call"]["model"] == "openai:gpt-4o-mini" and step["model_call"]["prompt_id"] == "agent@v2"
    )
    assert reply["lineage"]["agent_answer"]["attempt"] == 1
    key = step["calls"][0]["idempotency_key"]
    assert key == idempotency_key(f"default/{conversation_id}", reply["turn_id"], step["calls"][0]["call_id"])
    assert conversation_id not in key and "default" not in key  # a third party learns neither
    assert len(await scheduled(client, conversation_id, "call_tool")) == 1  # each call its own activity


async def test_the_agent_remembers_and_forgets_for_the_conversations_user_only_with_consent(
    client: Client, settings: Settings, tmp_path: Path, model: tuple[FakeLlm, str]
) -> None:
    fake, url = model
    run = uuid.uuid4().hex[:6]
    consenting, refusing = f"agent-mem-{run}", f"agent-nomem-{run}"
    async with agent_stack(client, settings, tmp_path, url, memory=True) as chat:
        http = chat.http
        assert (await http.put(f"/v1/users/{consenting}/memory/consent", json={"consented": True})).is_success
        for user in (consenting, refusing):
            created = await http.post("/v1/conversations", json={"id": f"c-{user}", "user": user})
            assert created.status_code == 201, created.text
        fake.plans = [
            Plan(tool_calls=[("remember", {"kind": "city", "value": "York"})]),
            Plan(text="I'll remember York."),
        ]
        await turn(http, f"c-{consenting}", "where is my order?")
        assert {"remember", "forget"} <= {tool["function"]["name"] for tool in fake.requests[0]["tools"]}
        items = (await http.get(f"/v1/users/{consenting}/memory")).json()["items"]
        (city,) = [item for item in items if item["kind"] == "city"]
        assert (city["value"], city["source"], city["conversation_id"]) == (
            "York",
            "model",
            f"c-{consenting}",
        )

        fake.plans = [Plan(tool_calls=[("forget", {"kind": "city"})]), Plan(text="Forgotten.")]
        await turn(http, f"c-{consenting}", "where is my order?")
        kinds = [item["kind"] for item in (await http.get(f"/v1/users/{consenting}/memory")).json()["items"]]
        assert "city" not in kinds

        # Without consent nothing is kept, and the model is told so.
        fake.plans = [
            Plan(tool_calls=[("remember", {"kind": "city", "value": "York"})]),
            Plan(text="Sorry."),
        ]
        refused = await turn(http, f"c-{refusing}", "where is my order?")
        [outcome] = refused["lineage"]["agent"][0]["outcomes"]
        assert not outcome["ok"] and "not agreed" in outcome["error"]
        assert (await http.get(f"/v1/users/{refusing}/memory")).json()["items"] == []


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


# --- approvals -----------------------------------------------------------------------------------


async def state_of(http: httpx.AsyncClient, conversation_id: str) -> dict[str, Any]:
    response = await http.get(f"/v1/conversations/{conversation_id}")
    assert response.status_code == 200, response.text
    state: dict[str, Any] = response.json()
    return state


async def decide(
    http: httpx.AsyncClient, conversation_id: str, call_id: str, approve: bool, note: str | None = None
) -> httpx.Response:
    return await http.post(
        f"/v1/conversations/{conversation_id}/approvals/{call_id}", json={"approve": approve, "note": note}
    )


async def test_a_call_that_needs_a_persons_approval_waits_for_it_then_runs_once(
    client: Client, settings: Settings, tmp_path: Path, model: tuple[FakeLlm, str]
) -> None:
    fake, url = model
    fake.plans = [
        Plan(tool_calls=[("start_return", {"order_id": "NW-654321", "reason": "too quiet"})]),
        Plan(text="Your return is open; the label is on its way by email."),
    ]
    conversation_id = f"approved-{uuid.uuid4().hex[:6]}"
    async with agent_stack(client, settings, tmp_path, url, tools=TOOLS) as chat:
        asked = await turn(chat.user, conversation_id, "I want to return my speaker, order NW-654321")
        [pending] = asked["approvals"]
        assert pending["name"] == "start_return" and pending["approval"] == "agent"
        assert pending["arguments"] == {"order_id": "NW-654321", "reason": "too quiet"}
        assert "start_return" in asked["reply"]["text"] and "approval" in asked["reply"]["text"]
        assert demo.Shop(chat.settings.data_dir).actions() == []  # nothing done before the approval
        assert (await state_of(chat.user, conversation_id))["pending_approvals"][0]["call_id"] == pending[
            "call_id"
        ]

        refused = await decide(chat.user, conversation_id, pending["call_id"], True)
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
        unknown = await decide(chat.http, conversation_id, "call_nope", True)
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "approval_not_found"

        approved = await decide(chat.http, conversation_id, pending["call_id"], True, "checked the order")
        assert approved.status_code == 200, approved.text
        answer = approved.json()["reply"]
        again = await decide(chat.http, conversation_id, pending["call_id"], True)
        assert again.status_code == 404  # decided and done: nothing waits any more
        state = await state_of(chat.user, conversation_id)
        messages = (await chat.user.get(f"/v1/conversations/{conversation_id}/messages")).json()["items"]

    assert answer["reply"]["text"] == "Your return is open; the label is on its way by email."
    assert answer["resumes"] == asked["turn_id"] and answer["turn_index"] == asked["turn_index"] + 1
    # One way to answer: the agent's answer after the approval names what its turn's answer named.
    assert answer["lineage"]["nlu_model"] and answer["lineage"]["action"] == "agent"
    for field in ("nlu_model", "action", "retrieval_query", "flags"):
        assert answer["lineage"][field] == asked["lineage"][field], field
    outcome = answer["lineage"]["agent"][-1]["outcomes"][0]
    assert outcome["ok"] and outcome["approval"]["approved"] and outcome["approval"]["role"] == "agent"
    assert outcome["approval"]["note"] == "checked the order" and outcome["approval"]["by"]
    [made] = demo.Shop(chat.settings.data_dir).actions("return")
    assert made["order_id"] == "NW-654321" and made["idempotency_key"] == call_key(conversation_id, pending)
    assert state["pending_approvals"] == []
    # The transcript: the user's message, the bot asking, the agent's answer after the approval.
    assert [(m["role"], m["turn_index"]) for m in messages][-3:] == [
        ("user", asked["turn_index"]),
        ("bot", asked["turn_index"]),
        ("bot", answer["turn_index"]),
    ]
    result = [m for m in fake.requests[-1]["messages"] if m["role"] == "tool"][-1]["content"]
    assert made["reference"] in result


async def test_a_denied_call_never_runs_and_the_model_reads_the_denial(
    client: Client, settings: Settings, tmp_path: Path, model: tuple[FakeLlm, str]
) -> None:
    fake, url = model
    fake.plans = [
        Plan(tool_calls=[("change_address", {"order_id": "NW-105733", "address": "Hauptstr. 1, Berlin"})]),
        Plan(text="All right, I left the address as it was."),
    ]
    conversation_id = f"denied-{uuid.uuid4().hex[:6]}"
    async with agent_stack(client, settings, tmp_path, url, tools=TOOLS) as chat:
        asked = await turn(chat.user, conversation_id, "please send order NW-105733 to Hauptstr. 1, Berlin")
        [pending] = asked["approvals"]
        assert pending["approval"] == "user"
        denied = await decide(chat.user, conversation_id, pending["call_id"], False, "wrong street")
        assert denied.status_code == 200, denied.text
    answer = denied.json()["reply"]
    assert answer["reply"]["text"] == "All right, I left the address as it was."
    outcome = answer["lineage"]["agent"][-1]["outcomes"][0]
    assert not outcome["ok"] and outcome["approval"]["role"] == "user" and not outcome["approval"]["approved"]
    told = [m for m in fake.requests[-1]["messages"] if m["role"] == "tool"][-1]["content"]
    assert "not approved" in told and "wrong street" in told
    assert demo.Shop(chat.settings.data_dir).actions() == []


async def test_an_approval_nobody_gives_in_time_counts_as_denied(
    client: Client, settings: Settings, tmp_path: Path, model: tuple[FakeLlm, str]
) -> None:
    fake, url = model
    fake.plans = [
        Plan(tool_calls=[("start_return", {"order_id": "NW-654321"})]),
        Plan(text="No one could approve the return yet; a colleague will get back to you."),
    ]
    conversation_id = f"timeout-{uuid.uuid4().hex[:6]}"
    async with agent_stack(client, settings, tmp_path, url, tools=TOOLS, approval_timeout_seconds=2) as chat:
        asked = await turn(chat.user, conversation_id, "return order NW-654321 please")
        assert asked["approvals"]
        for _ in range(100):
            items = (await chat.user.get(f"/v1/conversations/{conversation_id}/messages")).json()["items"]
            if items[-1]["turn_index"] > asked["turn_index"]:
                break
            await asyncio.sleep(0.2)
        state = await state_of(chat.user, conversation_id)
        late = await decide(chat.http, conversation_id, asked["approvals"][0]["call_id"], True)
    assert items[-1]["role"] == "bot" and items[-1]["text"].startswith("No one could approve the return yet")
    assert state["pending_approvals"] == [] and late.status_code == 404
    told = [m for m in fake.requests[-1]["messages"] if m["role"] == "tool"][-1]["content"]
    assert "no one decided in time" in told
    assert demo.Shop(chat.settings.data_dir).actions() == []


async def test_two_pending_approvals_each_resolve_into_their_own_call(
    client: Client, settings: Settings, tmp_path: Path, model: tuple[FakeLlm, str]
) -> None:
    """The second decision to arrive is for the first call asked: each decision reaches its own call
    (the address change is approved and made, the return is denied and not made)."""
    fake, url = model
    fake.plans = [
        Plan(
            tool_calls=[
                ("start_return", {"order_id": "NW-654321"}),
                ("change_address", {"order_id": "NW-105733", "address": "Ringstr. 5, Wien"}),
                ("order_status", {"order_id": "NW-482913"}),
            ]
        ),
        Plan(text="The address is changed; the return was not approved."),
    ]
    conversation_id = f"two-{uuid.uuid4().hex[:6]}"
    async with agent_stack(client, settings, tmp_path, url, tools=TOOLS) as chat:
        asked = await turn(
            chat.user, conversation_id, "return NW-654321 and send NW-105733 to Ringstr. 5, Wien"
        )
        by_name = {p["name"]: p for p in asked["approvals"]}
        assert set(by_name) == {"start_return", "change_address"}
        # The call that needed no approval ran at once.
        [ran] = asked["lineage"]["agent"][-1]["outcomes"]
        assert ran["name"] == "order_status" and ran["ok"]
        first = await decide(chat.user, conversation_id, by_name["change_address"]["call_id"], True)
        assert first.status_code == 200 and first.json()["reply"] is None
        assert [p["name"] for p in first.json()["pending"]] == ["start_return"]
        second = await decide(chat.http, conversation_id, by_name["start_return"]["call_id"], False)
        assert second.status_code == 200, second.text
    answer = second.json()["reply"]
    outcomes = {o["name"]: o for o in answer["lineage"]["agent"][-1]["outcomes"]}
    assert outcomes["change_address"]["ok"] and outcomes["change_address"]["approval"]["approved"]
    assert not outcomes["start_return"]["ok"] and not outcomes["start_return"]["approval"]["approved"]
    assert outcomes["order_status"]["approval"] is None
    [changed] = demo.Shop(chat.settings.data_dir).actions()
    assert changed["kind"] == "address" and changed["detail"] == "Ringstr. 5, Wien"
    assert changed["idempotency_key"] == call_key(conversation_id, by_name["change_address"])
    results = {m["tool_call_id"]: m["content"] for m in fake.requests[-1]["messages"] if m["role"] == "tool"}
    assert "not approved" in results[by_name["start_return"]["call_id"]]
    assert changed["reference"] in results[by_name["change_address"]["call_id"]]


# --- a worker killed during a tool call -------------------------------------------------------------


async def test_a_worker_killed_during_an_approved_call_makes_its_effect_once(
    client: Client,
    settings: Settings,
    tmp_path: Path,
    model: tuple[FakeLlm, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The return is opened by the shop, then the worker is SIGKILLed before it can report it. The call
    times out and another worker retries it with the same idempotency key: the shop gives the first
    return back instead of opening a second one, and the agent answers with it."""
    fake, url = model
    fake.plans = [
        Plan(tool_calls=[("start_return", {"order_id": "NW-654321", "reason": "broken"})]),
        Plan(text="Your return is open."),
    ]
    killed = settings.model_copy(
        update={
            "generator": "openai",
            "llm_base_url": url,
            "llm_model": "gpt-4o-mini",
            "bot_path": agent_bot(
                settings, tmp_path, tools=[ORDER_STATUS, START_RETURN | {"timeout_seconds": 4, "attempts": 6}]
            ),
            # Room for the second worker to start while the call waits: the turn and the API wait longer.
            "turn_deadline_seconds": 60,
            "turn_timeout_seconds": 90,
        }
    )
    _, user_key = create_key(get_engine(killed.resolved_database_url), tenant="default", scope="client")
    shop = demo.Shop(killed.data_dir)
    conversation_id = f"killed-{uuid.uuid4().hex[:6]}"
    first = WorkerProcess(killed, tmp_path / "worker-1.log")
    second = WorkerProcess(killed, tmp_path / "worker-2.log")
    app = create_app(killed, temporal=client)
    monkeypatch.setenv(demo.LATENCY_VARIABLE, "30")  # the shop acts at once and answers late: time to die in
    try:
        await first.start()
        monkeypatch.delenv(demo.LATENCY_VARIABLE)
        async with api_client(app) as http, api_client(app, api_key=user_key) as user:
            asked = await turn(user, conversation_id, "please return order NW-654321, it is broken")
            [pending] = asked["approvals"]
            deciding = asyncio.ensure_future(decide(http, conversation_id, pending["call_id"], True))
            await wait_until(lambda: len(shop.actions()) == 1, "the shop to open the return")
            await first.kill()
            await second.start()
            decided = await deciding
            # 200 with the answer, or 504 if the API stopped waiting first: the conversation goes on anyway.
            assert decided.status_code in (200, 504), decided.text
            answer = await resumed_answer(user, conversation_id, after=asked["turn_index"])
    finally:
        await first.kill()
        await second.kill()
    [made] = shop.actions()
    assert made["idempotency_key"] == call_key(conversation_id, pending)
    assert answer["answer"]["text"] == "Your return is open."
    outcome = answer["lineage"]["agent"][-1]["outcomes"][0]
    assert outcome["ok"] and outcome["attempt"] == 2 and made["reference"] in outcome["content"]


async def resumed_answer(http: httpx.AsyncClient, conversation_id: str, after: int) -> dict[str, Any]:
    """The bot's next transcript entry after `after`, with its lineage (waits up to a minute)."""
    for _ in range(600):
        items = (await http.get(f"/v1/conversations/{conversation_id}/messages")).json()["items"]
        later = [m for m in items if m["role"] == "bot" and m["turn_index"] > after]
        if later:
            lineage = await http.get(
                f"/v1/conversations/{conversation_id}/turns/{later[0]['turn_id']}/lineage"
            )
            assert lineage.status_code == 200, lineage.text
            return {"answer": later[0], "lineage": lineage.json()["lineage"]}
        await asyncio.sleep(0.1)
    raise AssertionError("the agent did not go on")


# --- bounded history ---------------------------------------------------------------------------------

MAX_RUN_HISTORY_BYTES = 2 * 1024 * 1024


async def test_150_tool_calls_50_in_one_turn_keep_every_run_under_2_mb_and_replay(
    client: Client, settings: Settings, tmp_path: Path, model: tuple[FakeLlm, str]
) -> None:
    """The model's inputs are read from the store inside each step (not carried through history), results
    are cut for the model (the whole of a long one kept in the store and linked) and the conversation
    continues as new every 4 messages: no run's history grows with the conversation."""
    fake, url = model
    orders = ["NW-482913", "NW-105733", "NW-654321"]
    fake.plans = [
        Plan(tool_calls=[("order_status", {"order_id": orders[n % 3]}) for n in range(50)]),
        Plan(text="All 50 looked up."),
    ]
    for turn_number in range(10):
        fake.plans += [
            Plan(tool_calls=[("order_status", {"order_id": orders[n % 3]}) for n in range(10)]),
            Plan(text=f"Ten more looked up ({turn_number})."),
        ]
    conversation_id = f"bounded-{uuid.uuid4().hex[:6]}"
    long = settings.model_copy(update={"turns_per_run": 4})
    async with agent_stack(
        client, long, tmp_path, url, max_tool_calls=60, max_steps=4, max_result_chars=100
    ) as chat:
        replies = [await turn(chat.user, conversation_id, "where is my order NW-482913?") for _ in range(11)]
        first = replies[0]["lineage"]["agent"][0]["outcomes"][0]
        kept = await chat.user.get(f"/v1/conversations/{conversation_id}/tool-results/{first['call_id']}")

    assert [len(r["lineage"]["agent"][0]["calls"]) for r in replies] == [50] + [10] * 10
    assert all(o["ok"] for r in replies for o in r["lineage"]["agent"][0]["outcomes"])
    # What the model saw of a result is cut; the whole of it is in the store, linked from the lineage.
    assert first["stored"] and len(first["content"]) <= 100 and first["size"] > 100
    assert kept.status_code == 200 and kept.json()["size"] == first["size"]
    assert kept.json()["result"]["order_id"] == "NW-482913"

    workflow = f"conv-default/{conversation_id}"
    runs = [run.run_id async for run in client.list_workflows(f"WorkflowId = '{workflow}'")]
    assert len(runs) >= 3  # continued as new mid-conversation, more than once
    calls = 0
    for run_id in runs:
        history = await client.get_workflow_handle(workflow, run_id=run_id).fetch_history()
        size = len(history.to_json().encode())
        assert size < MAX_RUN_HISTORY_BYTES, f"run {run_id}: {size} bytes"
        calls += sum(
            1
            for e in history.events
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
            and e.activity_task_scheduled_event_attributes.activity_type.name == "call_tool"
        )
        assert (await replay(history, client.data_converter)).replay_failure is None
    assert calls == 150


async def test_a_retried_model_step_tells_the_stream_to_start_over(
    client: Client, settings: Settings, tmp_path: Path, model: tuple[FakeLlm, str]
) -> None:
    fake, url = model
    fake.plans = [Plan(status=500), Plan(text="Your order is on its way.")]
    conversation_id = f"restart-{uuid.uuid4().hex[:6]}"
    async with (
        agent_chat(client, settings, tmp_path, url) as http,
        http.stream(
            "POST",
            f"/v1/conversations/{conversation_id}/turns",
            json={"text": "where is my order NW-482913?"},
            headers=SSE,
        ) as response,
    ):
        received = await read_events(response)
    kinds = [event.kind for event in received]
    assert "restart" in kinds and kinds.index("restart") < kinds.index("token"), kinds
    assert next(e.data for e in received if e.kind == "restart")["attempt"] == 2
    after = received[kinds.index("restart") :]
    streamed = "".join(event.data["text"] for event in after if event.kind == "token")
    assert streamed == received[-1].data["reply"]["text"] == "Your order is on its way."
