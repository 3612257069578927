"""The v1 API over real HTTP, with the real Temporal dev server and a real worker behind it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from temporalio.client import Client
from temporalio.service import RPCError

from api import create_app
from dialogue.model.contracts import RecordConversationRequest
from dialogue.platform import store
from dialogue.platform.db import get_engine
from dialogue.platform.settings import Settings
from dialogue.platform.temporal import conversation_key, workflow_id
from tests.conftest import api_client, free_port


def new_id() -> str:
    return f"api-{uuid.uuid4().hex[:10]}"


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["message"]


async def test_a_turn_creates_the_conversation_and_answers_in_one_round_trip(http: httpx.AsyncClient) -> None:
    conversation_id = new_id()
    response = await http.post(f"/v1/conversations/{conversation_id}/turns", json={"text": "hello"})

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["turn_index"] == 0 and body["turn_id"]
    assert body["reply"]["text"] and body["reply"]["sources"] == []
    assert body["nlu"]["intent"]["name"] == "greet"
    assert 0.5 < body["nlu"]["intent"]["confidence"] <= 1
    assert body["nlu"]["model"].startswith("trained:")
    assert body["degraded"] is False
    assert body["timings_ms"]["total"] > 0


@pytest.mark.parametrize("store_url", ["sqlite", "postgresql"], indirect=True)
async def test_state_transcript_end_and_list(http: httpx.AsyncClient) -> None:
    conversation_id = new_id()
    base = f"/v1/conversations/{conversation_id}"
    first = (await http.post(f"{base}/turns", json={"text": "hi, I'm writing about NW-654321"})).json()
    second = (await http.post(f"{base}/turns", json={"text": "What is your returns policy?"})).json()
    assert second["turn_index"] == 1
    assert second["reply"]["sources"][0]["document_id"] == "returns"

    state = (await http.get(base)).json()
    assert state["status"] == "active"
    assert state["turn_count"] == 2
    assert state["last_intent"] == "returns"
    assert state["slots"] == {"order_id": "NW-654321"}

    transcript = (await http.get(f"{base}/messages")).json()
    assert transcript["total"] == 4
    assert [(m["role"], m["turn_id"]) for m in transcript["items"]] == [
        ("user", first["turn_id"]),
        ("bot", first["turn_id"]),
        ("user", second["turn_id"]),
        ("bot", second["turn_id"]),
    ]
    page = (await http.get(f"{base}/messages", params={"limit": 1, "offset": 3})).json()
    assert [m["text"] for m in page["items"]] == [second["reply"]["text"]]

    ended = await http.post(f"{base}/end")
    assert ended.status_code == 200 and ended.json()["status"] == "ended"
    assert_error(await http.post(f"{base}/turns", json={"text": "hello again"}), 409, "conversation_ended")
    assert (await http.post(f"{base}/end")).json() == ended.json()  # ending twice is harmless
    assert (await http.get(base)).json()["status"] == "ended"

    for _ in range(100):  # wait for the workflow to close, then try again: still 409
        if (await http.get("/v1/conversations", params={"status": "ended"})).json()["total"]:
            break
        await asyncio.sleep(0.05)
    assert_error(await http.post(f"{base}/turns", json={"text": "hello again"}), 409, "conversation_ended")

    listed = (await http.get("/v1/conversations", params={"status": "ended"})).json()
    assert conversation_id in [c["conversation_id"] for c in listed["items"]]
    # What the console filters by: the last intent, degraded answers, part of the id.
    found = (
        await http.get("/v1/conversations", params={"q": conversation_id[4:], "intent": "returns"})
    ).json()
    assert [(c["conversation_id"], c["tenant"], c["degraded_count"]) for c in found["items"]] == [
        (conversation_id, "default", 0)
    ]
    assert (await http.get("/v1/conversations", params={"q": conversation_id, "intent": "greet"})).json()[
        "total"
    ] == 0
    assert (await http.get("/v1/conversations", params={"q": conversation_id, "degraded": "true"})).json()[
        "total"
    ] == 0
    active = (await http.get("/v1/conversations", params={"status": "active"})).json()
    assert conversation_id not in [c["conversation_id"] for c in active["items"]]


async def test_create_conversation_with_a_chosen_id_then_conflict(http: httpx.AsyncClient) -> None:
    conversation_id = new_id()
    created = await http.post("/v1/conversations", json={"id": conversation_id})
    assert created.status_code == 201
    assert created.json() == {"conversation_id": conversation_id, "status": "active"}
    assert_error(
        await http.post("/v1/conversations", json={"id": conversation_id}), 409, "conversation_exists"
    )

    empty = await http.get(f"/v1/conversations/{conversation_id}/messages")
    assert empty.status_code == 200 and empty.json()["total"] == 0
    generated = await http.post("/v1/conversations")
    assert generated.status_code == 201 and generated.json()["conversation_id"]


async def test_the_same_idempotency_key_returns_the_same_turn(http: httpx.AsyncClient) -> None:
    url = f"/v1/conversations/{new_id()}/turns"
    headers = {"Idempotency-Key": "client-retry-1"}
    first = await http.post(url, json={"text": "I want a refund"}, headers=headers)
    again = await http.post(url, json={"text": "I want a refund"}, headers=headers)
    assert first.json() == again.json()
    assert first.json()["turn_id"] == "client-retry-1"
    assert (await http.get(url.removesuffix("/turns"))).json()["turn_count"] == 1


async def test_unknown_conversation_is_404(http: httpx.AsyncClient) -> None:
    base = f"/v1/conversations/{new_id()}"
    assert_error(await http.get(base), 404, "conversation_not_found")
    assert_error(await http.get(f"{base}/messages"), 404, "conversation_not_found")
    assert_error(await http.post(f"{base}/end"), 404, "conversation_not_found")


async def test_bad_bodies_are_rejected_with_one_error_shape(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    url = f"/v1/conversations/{new_id()}/turns"
    assert_error(await http.post(url, json={"text": "   "}), 422, "invalid_request")  # the schema's
    too_long = "x" * (settings.max_text_chars + 1)
    assert_error(await http.post(url, json={"text": too_long}), 422, "invalid_turn")
    assert_error(await http.post(url, json={"txt": "hello"}), 422, "invalid_request")
    assert_error(
        await http.post(url, content=b"{not json", headers={"content-type": "application/json"}),
        422,
        "invalid_request",
    )
    huge = {"text": "x" * (settings.max_body_bytes + 10)}
    assert_error(await http.post(url, json=huge), 413, "content_too_large")

    async def streamed() -> AsyncIterator[bytes]:  # no Content-Length: the bytes are counted as they come
        for _ in range(settings.max_body_bytes // 1024 + 2):
            yield b" " * 1024

    chunked = await http.post(url, content=streamed(), headers={"content-type": "application/json"})
    assert_error(chunked, 413, "content_too_large")
    assert_error(await http.get("/v1/conversations/bad%20id"), 422, "invalid_request")
    assert_error(await http.get("/v1/nothing-here"), 404, "not_found")
    # Nothing of the above reached Temporal or the store.
    assert_error(await http.get(url.removesuffix("/turns")), 404, "conversation_not_found")


async def test_every_v1_route_needs_the_api_key(http: httpx.AsyncClient) -> None:
    calls = [
        ("GET", "/v1/conversations"),
        ("POST", "/v1/conversations"),
        ("POST", "/v1/conversations/x/turns"),
        ("GET", "/v1/conversations/x"),
        ("GET", "/v1/conversations/x/messages"),
        ("POST", "/v1/conversations/x/end"),
    ]
    for method, path in calls:
        missing = await http.request(method, path, headers={"Authorization": ""}, json={"text": "hi"})
        assert_error(missing, 401, "unauthenticated")
        assert missing.headers["www-authenticate"] == "Bearer"
        wrong = await http.request(
            method, path, headers={"Authorization": "Bearer nope"}, json={"text": "hi"}
        )
        assert_error(wrong, 401, "invalid_credentials")
    assert (await http.get("/healthz", headers={"Authorization": ""})).status_code == 200
    assert (await http.get("/readyz")).json() == {
        "status": "ready",
        "checks": {"temporal": "ok", "database": "ok", "worker": "ok"},
    }


async def test_temporal_unreachable_is_503_with_retry_after(settings: Settings) -> None:
    down = settings.model_copy(update={"temporal_address": f"127.0.0.1:{free_port()}"})
    async with api_client(create_app(down)) as http:
        for response in [
            await http.post("/v1/conversations/x/turns", json={"text": "hello"}),
            await http.get("/v1/conversations/x"),
            await http.post("/v1/conversations/x/end"),
        ]:
            assert_error(response, 503, "temporal_unavailable")
            assert response.headers["retry-after"]
        ready = await http.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["temporal"].startswith("unavailable")
        assert (await http.get("/v1/conversations")).status_code == 200  # the store still answers


async def test_knowledge_documents_are_versioned_and_answer_turns(http: httpx.AsyncClient) -> None:
    doc = {
        "id": "zorblax",
        "content_type": "markdown",
        "text": "# Zorblax teleporter\n\n## Delivery\n\nThe Zorblax teleporter ships from our Oslo warehouse in 4 days.",
    }
    created = await http.post("/v1/knowledge/documents", json=doc)
    assert created.status_code == 201, created.text
    assert created.json() == {"document_id": "zorblax", "version": 1, "chunks": 1, "changed": True}
    same = await http.post("/v1/knowledge/documents", json=doc)
    assert same.status_code == 200 and same.json()["changed"] is False
    doc["text"] = doc["text"].replace("4 days", "2 days")
    assert (await http.post("/v1/knowledge/documents", json=doc)).json()["version"] == 2

    listed = (await http.get("/v1/knowledge/documents", params={"limit": 200})).json()
    assert "zorblax" in [d["document_id"] for d in listed["items"]]
    one = (await http.get("/v1/knowledge/documents/zorblax")).json()
    assert (one["title"], one["version"]) == ("Zorblax teleporter", 2)

    turn = await http.post(
        f"/v1/conversations/{new_id()}/turns",
        json={"text": "How long does shipping of the Zorblax teleporter take?"},
    )
    reply = turn.json()["reply"]
    assert "2 days" in reply["text"]
    assert reply["sources"][0]["document_id"] == "zorblax"
    assert reply["sources"][0]["document_version"] == 2

    assert (await http.delete("/v1/knowledge/documents/zorblax")).status_code == 204
    assert_error(await http.get("/v1/knowledge/documents/zorblax"), 404, "document_not_found")
    assert_error(await http.delete("/v1/knowledge/documents/zorblax"), 404, "document_not_found")
    assert_error(
        await http.post("/v1/knowledge/documents", json={"id": "x", "text": ""}), 422, "invalid_request"
    )


async def test_nlu_parse_has_no_side_effects(http: httpx.AsyncClient) -> None:
    before = (await http.get("/v1/conversations")).json()["total"]
    parsed = await http.post(
        "/v1/nlu/parse", json={"text": "My order NW-123456 never arrived, this is awful"}
    )
    assert parsed.status_code == 200, parsed.text
    body = parsed.json()
    assert body["intent"]["name"] in {"delivery_problem", "order_status", "complaint"}
    assert ("order_id", "NW-123456") in [(e["entity"], e["value"]) for e in body["entities"]]
    assert body["sentiment"]["label"] == "negative"
    assert len(body["ranking"]) >= 2
    assert_error(await http.post("/v1/nlu/parse", json={"text": " "}), 422, "invalid_request")
    assert (await http.get("/v1/conversations")).json()["total"] == before  # nothing recorded


async def test_the_order_flow_fills_its_slot_survives_a_detour_and_calls_its_tool(
    http: httpx.AsyncClient,
) -> None:
    base = f"/v1/conversations/{new_id()}"

    async def say(text: str) -> dict[str, Any]:
        response = await http.post(f"{base}/turns", json={"text": text})
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        assert not body["degraded"], body
        return body

    asked = await say("Where is my order?")
    assert "order number" in asked["reply"]["text"]
    state = (await http.get(base)).json()
    assert (state["active_flow"], state["requested_slot"]) == ("order_lookup", "order_id")

    detour = await say("By the way, how much does express shipping cost?")
    assert "12.90" in detour["reply"]["text"]
    assert "To get back to checking your order" in detour["reply"]["text"]
    assert (await http.get(base)).json()["active_flow"] == "order_lookup"

    unknown = await say("It's NW-000000")
    assert "couldn't find an order NW-000000" in unknown["reply"]["text"]
    assert (await http.get(base)).json()["active_flow"] == "order_lookup"

    found = await say("Sorry, I meant NW-482913")
    assert "NW-482913" in found["reply"]["text"] and "shipped" in found["reply"]["text"]
    state = (await http.get(base)).json()
    assert state["active_flow"] is None
    assert state["slots"]["order_id"] == "NW-482913"

    goodbye = await say("Goodbye!")
    assert goodbye["nlu"]["intent"]["name"] == "goodbye"  # its action is `end`
    assert_error(await http.post(f"{base}/turns", json={"text": "hello?"}), 409, "conversation_ended")


async def test_an_ended_conversation_stays_ended_after_temporal_forgot_it(
    http: httpx.AsyncClient, settings: Settings, client: Client
) -> None:
    # As after the namespace's retention: the store knows it ended, Temporal no longer has the run.
    conversation_id = new_id()
    engine = get_engine(settings.resolved_database_url)
    store.record_conversation(
        engine,
        RecordConversationRequest(
            conversation_id=conversation_key("default", conversation_id), status="ended", at=datetime.now(UTC)
        ),
    )
    assert_error(
        await http.post(f"/v1/conversations/{conversation_id}/turns", json={"text": "hello"}),
        409,
        "conversation_ended",
    )
    assert_error(
        await http.post("/v1/conversations", json={"id": conversation_id}), 409, "conversation_ended"
    )
    with pytest.raises(RPCError):
        await client.get_workflow_handle(
            workflow_id(conversation_key("default", conversation_id))
        ).describe()  # nothing was started


async def test_ten_turns_at_once_are_all_answered_in_order_and_recorded_once(http: httpx.AsyncClient) -> None:
    base = f"/v1/conversations/{new_id()}"
    responses = await asyncio.gather(
        *(http.post(f"{base}/turns", json={"text": f"question {i} about returns"}) for i in range(10))
    )
    assert [r.status_code for r in responses] == [200] * 10
    assert sorted(r.json()["turn_index"] for r in responses) == list(range(10))
    transcript = (await http.get(f"{base}/messages", params={"limit": 200})).json()
    assert transcript["total"] == 20
    assert [m["turn_index"] for m in transcript["items"]] == [i for i in range(10) for _ in (0, 1)]
    assert (await http.get(base)).json()["turn_count"] == 10
