"""Attacks through the ids a model gives its tool calls: a model (or whoever steers it) that repeats an id,
or names one it saw in an earlier turn, cannot make one call's stored result replace another's."""

from __future__ import annotations

import uuid
from pathlib import Path

from temporalio.client import Client

from dialogue.platform.settings import Settings
from tests.fake_llm import FakeLlm, Plan
from tests.test_agent import agent_stack, turn


async def test_a_repeated_call_id_cannot_overwrite_another_calls_stored_result(
    client: Client, settings: Settings, tmp_path: Path, model: tuple[FakeLlm, str]
) -> None:
    fake, url = model
    fake.plans = [
        Plan(tool_calls=[("order_status", {"order_id": "NW-482913"})], call_ids=["call_1"]),
        Plan(text="One order looked up."),
        Plan(
            tool_calls=[
                ("order_status", {"order_id": "NW-105733"}),
                ("order_status", {"order_id": "NW-654321"}),
            ],
            call_ids=["call_1", "call_1"],
        ),
        Plan(text="Two more looked up."),
    ]
    conversation_id = f"ids-{uuid.uuid4().hex[:6]}"
    async with agent_stack(client, settings, tmp_path, url, max_result_chars=100) as chat:
        first = await turn(chat.user, conversation_id, "where is my order NW-482913?")
        second = await turn(chat.user, conversation_id, "and NW-105733 and NW-654321?")
        outcomes = [o for reply in (first, second) for o in reply["lineage"]["agent"][0]["outcomes"]]
        kept = [
            (await chat.user.get(f"/v1/conversations/{conversation_id}/tool-results/{o['call_id']}")).json()
            for o in outcomes
        ]
    assert all(o["stored"] for o in outcomes) and len({o["call_id"] for o in outcomes}) == 3
    assert [k["result"]["order_id"] for k in kept] == ["NW-482913", "NW-105733", "NW-654321"]
    results = [m["tool_call_id"] for m in fake.requests[3]["messages"] if m["role"] == "tool"]
    assert results == [o["call_id"] for o in outcomes[1:]]  # each result answers its own call
