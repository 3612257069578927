"""Reminders against the real stack: a message the bot sends later on its own, scheduled by the integrator's
server or by a bot's tool, kept as a durable timer (across continue-as-new, after the user ended the
conversation), listed in the state, cancellable; refused with a clear error when it cannot be kept."""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.client import Client

from api import create_app
from dialogue.platform.settings import Settings
from tests.conftest import TEST_API_KEY, api_client, worker_for

DEMO = Path(__file__).resolve().parent.parent / "examples" / "demo"


async def messages(http: httpx.AsyncClient, conversation_id: str) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = (await http.get(f"/v1/conversations/{conversation_id}/messages")).json()[
        "items"
    ]
    return listed


async def said_by_bot(http: httpx.AsyncClient, conversation_id: str, text: str, within: float = 30) -> None:
    deadline = time.monotonic() + within
    while not any(m["role"] == "bot" and m["text"] == text for m in await messages(http, conversation_id)):
        assert time.monotonic() < deadline, await messages(http, conversation_id)
        await asyncio.sleep(0.2)


async def state(http: httpx.AsyncClient, conversation_id: str) -> dict[str, Any]:
    read: dict[str, Any] = (await http.get(f"/v1/conversations/{conversation_id}")).json()
    return read


async def test_a_reminder_is_said_when_due_listed_until_then_and_once(http: httpx.AsyncClient) -> None:
    conversation_id = f"remind-{uuid.uuid4().hex[:8]}"
    assert (
        await http.post(f"/v1/conversations/{conversation_id}/turns", json={"text": "hello"})
    ).status_code == 200
    text = "Your parcel leaves the warehouse today."
    body = {"text": text, "in_seconds": 5}
    headers = {"Idempotency-Key": f"r-{conversation_id}"}
    scheduled = await http.post(f"/v1/conversations/{conversation_id}/reminders", json=body, headers=headers)
    assert scheduled.status_code == 201, scheduled.text
    reminder = scheduled.json()
    again = await http.post(f"/v1/conversations/{conversation_id}/reminders", json=body, headers=headers)
    assert again.json()["id"] == reminder["id"]  # the same key: scheduled once
    assert [r["id"] for r in (await state(http, conversation_id))["reminders"]] == [reminder["id"]]
    await said_by_bot(http, conversation_id, text)
    said = [m for m in await messages(http, conversation_id) if m["text"] == text]
    assert len(said) == 1 and said[0]["role"] == "bot"
    assert (await state(http, conversation_id))["reminders"] == []
    # Sent: nothing left to cancel.
    gone = await http.delete(f"/v1/conversations/{conversation_id}/reminders/{reminder['id']}")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "reminder_not_found"


async def test_a_cancelled_reminder_is_never_said(http: httpx.AsyncClient) -> None:
    conversation_id = f"cancel-{uuid.uuid4().hex[:8]}"
    await http.post(f"/v1/conversations/{conversation_id}/turns", json={"text": "hello"})
    text = "This reminder is cancelled."
    soon = await http.post(
        f"/v1/conversations/{conversation_id}/reminders", json={"text": text, "in_seconds": 5}
    )
    later = await http.post(
        f"/v1/conversations/{conversation_id}/reminders", json={"text": "Later.", "in_seconds": 7200}
    )
    assert [r["text"] for r in (await state(http, conversation_id))["reminders"]] == [text, "Later."]
    cancelled = await http.delete(f"/v1/conversations/{conversation_id}/reminders/{soon.json()['id']}")
    assert cancelled.status_code == 204
    await asyncio.sleep(7)
    assert all(m["text"] != text for m in await messages(http, conversation_id))
    assert [r["id"] for r in (await state(http, conversation_id))["reminders"]] == [later.json()["id"]]


async def test_reminders_that_cannot_be_kept_are_refused(http: httpx.AsyncClient, settings: Settings) -> None:
    conversation_id = f"bad-{uuid.uuid4().hex[:8]}"
    await http.post(f"/v1/conversations/{conversation_id}/turns", json={"text": "hello"})
    url = f"/v1/conversations/{conversation_id}/reminders"
    for body in (
        {"text": "Next year and a bit.", "in_seconds": 400 * 86400},
        {"text": "   ", "in_seconds": 5},
        {"text": "When?"},
        {"text": "Now?", "in_seconds": 1},
    ):
        refused = await http.post(url, json=body)
        assert refused.status_code == 422 and refused.json()["error"]["code"] == "invalid_request", body
    token = await http.post("/v1/end-user-tokens", json={"user": "someone"})
    as_user = await http.post(
        url,
        json={"text": "Mine.", "in_seconds": 5},
        headers={"Authorization": f"Bearer {token.json()['token']}"},
    )
    assert as_user.status_code == 403
    ended = f"ended-{uuid.uuid4().hex[:8]}"
    await http.post(f"/v1/conversations/{ended}/turns", json={"text": "goodbye!"})
    late = await http.post(
        f"/v1/conversations/{ended}/reminders", json={"text": "Too late.", "in_seconds": 5}
    )
    assert late.status_code == 409 and late.json()["error"]["code"] == "conversation_ended"
    assert (await state(http, conversation_id))["reminders"] == []


async def report(http: httpx.AsyncClient, event: str, *, within: float = 15) -> dict[str, Any]:
    """`POST /v1/events` until it finds a conversation waiting (Temporal's visibility lags the workflow's
    write a little): what it did."""
    deadline = time.monotonic() + within
    while True:
        reported = await http.post("/v1/events", json={"name": event})
        assert reported.status_code == 200, reported.text
        outcome: dict[str, Any] = reported.json()
        if outcome["conversations"] or time.monotonic() > deadline:
            return outcome
        await asyncio.sleep(0.2)


async def test_a_reminder_waiting_for_an_event_is_said_when_the_integrator_reports_it(
    http: httpx.AsyncClient,
) -> None:
    """ "Tell me when my order ships": the integrator's system reports the event, not knowing which
    conversations wait for it; those that do say their reminder, once. One whose event does not come in
    time is dropped unsaid."""
    run = uuid.uuid4().hex[:8]
    shipped, other = f"order-shipped:NW-{run}", f"order-shipped:NW-other-{run}"
    waiting, unconcerned, impatient = (f"{name}-{run}" for name in ("waits", "unconcerned", "impatient"))
    text = "Your order has shipped: it arrives in 2 days."
    for conversation_id, event, seconds in (
        (waiting, shipped, 3600),
        (unconcerned, other, 3600),
        (impatient, shipped, 5),
    ):
        await http.post(f"/v1/conversations/{conversation_id}/turns", json={"text": "hello"})
        scheduled = await http.post(
            f"/v1/conversations/{conversation_id}/reminders",
            json={"text": text, "in_seconds": seconds, "on_event": event},
        )
        assert scheduled.status_code == 201 and scheduled.json()["on_event"] == event, scheduled.text
    [listed] = (await state(http, waiting))["reminders"]
    assert listed["on_event"] == shipped
    await asyncio.sleep(6)  # the impatient one's wait is over: dropped, unsaid
    assert (await state(http, impatient))["reminders"] == []

    outcome = await report(http, shipped)
    assert outcome == {
        "name": shipped,
        "conversations": [{"conversation_id": waiting, "reminders": [listed["id"]]}],
    }
    await said_by_bot(http, waiting, text)
    assert (await state(http, waiting))["reminders"] == []
    again = await http.post("/v1/events", json={"name": shipped})
    assert again.json()["conversations"] == []  # reported twice: said once
    await asyncio.sleep(1)
    assert [m["text"] for m in await messages(http, waiting)].count(text) == 1
    for untold in (unconcerned, impatient):
        assert text not in [m["text"] for m in await messages(http, untold)]
    assert [r["on_event"] for r in (await state(http, unconcerned))["reminders"]] == [other]
    token = await http.post("/v1/end-user-tokens", json={"user": "someone"})
    as_user = await http.post(
        "/v1/events", json={"name": other}, headers={"Authorization": f"Bearer {token.json()['token']}"}
    )
    assert as_user.status_code == 403
    spaced = await http.post("/v1/events", json={"name": "order shipped"})
    assert spaced.status_code == 422


async def test_a_reminder_outlives_continue_as_new_and_the_end_of_the_conversation(
    client: Client, settings: Settings
) -> None:
    """Scheduled, then the run continues as new (two messages a run) and the user says goodbye: the
    reminder is said all the same, in the run that holds it."""
    short_runs = settings.model_copy(update={"turns_per_run": 2})
    async with worker_for(client, short_runs), api_client(create_app(short_runs, temporal=client)) as http:
        conversation_id = f"carry-{uuid.uuid4().hex[:8]}"
        url = f"/v1/conversations/{conversation_id}"
        await http.post(f"{url}/turns", json={"text": "hello"})
        text = "Just checking in: did the parcel arrive?"
        assert (await http.post(f"{url}/reminders", json={"text": text, "in_seconds": 8})).status_code == 201
        for said in ("how much does express shipping cost?", "can I pay with PayPal?", "goodbye!"):
            assert (await http.post(f"{url}/turns", json={"text": said})).status_code == 200
        read = await state(http, conversation_id)
        assert read["status"] == "ended" and [r["text"] for r in read["reminders"]] == [text]
        runs = [run async for run in client.list_workflows(f"WorkflowId = 'conv-default/{conversation_id}'")]
        assert len(runs) >= 2  # it continued as new meanwhile
        await said_by_bot(http, conversation_id, text)


@pytest.fixture
def reminding_bot(tmp_path: Path, settings: Settings) -> Settings:
    """The demo bot whose order lookup, for an order not shipped yet, asks to follow up (`remind`)."""
    folder = tmp_path / "reminding"
    shutil.copytree(DEMO, folder, ignore=shutil.ignore_patterns("knowledge", "__pycache__"))
    shop = folder / "shop.py"
    source = shop.read_text()
    returned = """    return ToolResult(
        ok=True, data={**order, "details": details, "items": ", ".join(order.get("items") or [])}
    )"""
    assert returned in source
    shop.write_text(
        source.replace(
            returned,
            """    follow_up = {"text": f"Order {order['order_id']} has shipped.", "in_seconds": 2}
    return ToolResult(
        ok=True,
        data={**order, "details": details, "items": ", ".join(order.get("items") or [])}
        | ({"remind": follow_up} if order.get("status") == "processing" else {}),
    )""",
        )
    )
    raw = (
        (folder / "bot.yaml")
        .read_text()
        .replace("knowledge_dir: knowledge", f"knowledge_dir: {DEMO / 'knowledge'}")
    )
    (folder / "bot.yaml").write_text(raw)
    return settings.model_copy(update={"bot_path": folder / "bot.yaml"})


async def test_a_flows_tool_schedules_a_follow_up(client: Client, reminding_bot: Settings) -> None:
    async with (
        worker_for(client, reminding_bot),
        api_client(create_app(reminding_bot, temporal=client), TEST_API_KEY) as http,
    ):
        conversation_id = f"tool-{uuid.uuid4().hex[:8]}"
        url = f"/v1/conversations/{conversation_id}/turns"
        await http.post(url, json={"text": "where is my order?"})
        looked_up = (await http.post(url, json={"text": "it is NW-105733"})).json()
        assert "processing" in looked_up["reply"]["text"] or "NW-105733" in looked_up["reply"]["text"]
        [reminder] = (await state(http, conversation_id))["reminders"]
        assert reminder["by"] == "tool:order_status" and reminder["text"] == "Order NW-105733 has shipped."
        await said_by_bot(http, conversation_id, "Order NW-105733 has shipped.")
