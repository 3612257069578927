"""Human handoff over real HTTP: a person takes over, answers, and hands back; the transcript keeps both."""

from __future__ import annotations

import asyncio
import uuid

import httpx

from tests.test_streaming import Event, read_events
from tests.waiting import eventually


async def a_conversation(http: httpx.AsyncClient) -> str:
    """A new conversation the bot has answered once: its path under /v1."""
    base = f"/v1/conversations/ho-{uuid.uuid4().hex[:8]}"
    assert (await http.post(f"{base}/turns", json={"text": "hello"})).status_code == 200
    return base


async def test_a_person_takes_over_answers_and_hands_back(http: httpx.AsyncClient) -> None:
    base = await a_conversation(http)

    # An operator's console follows the conversation's events while this happens.
    async def follow() -> list[str]:
        async with http.stream("GET", f"{base}/events") as response:
            assert response.status_code == 200
            events = await read_events(response, limit=3)
        return [f"{e.kind}:{e.data.get('text', '')}" for e in events]

    console = asyncio.create_task(follow())
    taken = await http.post(f"{base}/handoff", json={"agent": "ada", "reason": "VIP customer"})
    assert taken.status_code == 200, taken.text
    assert taken.json()["held_by"] == "agent" and taken.json()["agent"] == "ada"
    assert (await http.get(base)).json()["held_by"] == "agent"

    held = await http.post(f"{base}/turns", json={"text": "where is my parcel?"})
    assert held.status_code == 200
    assert held.json()["held_by"] == "agent" and held.json()["reply"]["text"] == ""

    posted = await http.post(
        f"{base}/agent-messages", json={"text": "Hi, Ada here. Let me check.", "agent": "ada"}
    )
    assert posted.status_code == 201, posted.text
    back = await http.post(f"{base}/handback", json={"agent": "ada"})
    assert back.status_code == 200 and back.json()["held_by"] == "bot"
    assert await asyncio.wait_for(console, timeout=10) == [
        "handoff:Handed off to ada (VIP customer).",
        "agent_message:Hi, Ada here. Let me check.",
        "handback:ada handed back to the bot.",
    ]
    answered = await http.post(f"{base}/turns", json={"text": "thanks, bye"})
    assert answered.json()["held_by"] == "bot" and answered.json()["reply"]["text"]

    transcript = (await http.get(f"{base}/messages")).json()["items"]
    assert [(m["role"], m["author"]) for m in transcript] == [
        ("user", None),
        ("bot", None),
        ("system", "ada"),
        ("user", None),
        ("agent", "ada"),
        ("system", "ada"),
        ("user", None),
        ("bot", None),
    ]
    assert [m["turn_index"] for m in transcript] == [0, 0, 1, 2, 3, 4, 5, 5]


async def test_a_page_that_has_read_the_transcript_follows_from_the_newest_event(
    http: httpx.AsyncClient,
) -> None:
    base = await a_conversation(http)
    assert (await http.post(f"{base}/handoff", json={"agent": "ada"})).status_code == 200
    earlier = await http.post(f"{base}/agent-messages", json={"text": "Already in the transcript."})
    assert earlier.status_code == 201

    async with http.stream("GET", f"{base}/events", params={"from_now": "true"}) as response:
        assert response.status_code == 200
        received: list[Event] = []
        new = asyncio.ensure_future(read_events(response, limit=2, into=received))
        # The stream announced where it starts: what was logged before is behind it.
        await eventually(lambda: received, "the stream's open event")
        posted = await http.post(f"{base}/agent-messages", json={"text": "Sent while the page is open."})
        assert posted.status_code == 201
        opened, event = await asyncio.wait_for(new, timeout=10)
    assert (event.kind, event.data["text"]) == ("agent_message", "Sent while the page is open.")
    # The stream said where it started: reconnecting from there misses nothing.
    assert opened.kind == "open" and opened.id == str(event.data["seq"] - 1)


async def test_asking_for_a_person_hands_off_and_only_a_handed_off_conversation_takes_agent_messages(
    http: httpx.AsyncClient,
) -> None:
    base = await a_conversation(http)
    refused = await http.post(f"{base}/agent-messages", json={"text": "hi"})
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "not_handed_off"

    asked = await http.post(f"{base}/turns", json={"text": "I want to speak to a human agent"})
    assert asked.json()["nlu"]["intent"]["name"] == "human_agent"
    assert asked.json()["held_by"] == "agent"
    state = (await http.get(base)).json()
    assert state["held_by"] == "agent" and state["handoff"] is True
    assert (await http.post(f"{base}/agent-messages", json={"text": "I'm here."})).status_code == 201
    # Handing off twice changes nothing; an unknown conversation is 404.
    assert (await http.post(f"{base}/handoff", json={})).json()["held_by"] == "agent"
    unknown = await http.post("/v1/conversations/no-such-conversation/handoff", json={})
    assert unknown.status_code == 404
    empty = await http.post(f"{base}/agent-messages", json={"text": "  "})
    assert empty.status_code == 422
