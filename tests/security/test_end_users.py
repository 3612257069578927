"""Attacks across end users, against the real stack (Temporal dev server, a worker, the API over real HTTP):
one end user reaching another's conversation, order or approval, typed text overwriting what the
integrator's server set, and forged end-user tokens.

The integrator's server mints each user a short-lived token with its key (`POST /v1/end-user-tokens`); the
demo's orders belong to customers (examples/demo/orders.json): NWC-100001 owns NW-482913 and NW-105733,
NWC-100002 neither."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
import pytest
from fastapi import FastAPI, Request
from pydantic import SecretStr
from sqlalchemy import delete as sql_delete
from sqlmodel import Session, SQLModel, col, select
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Worker

from api import create_app
from dialogue.model.contracts import NOT_YOUR_CONVERSATION, ApprovalReply, ApprovalRequest, Updates
from dialogue.platform import store
from dialogue.platform.db import AuditEntry, ConversationOwner, get_engine
from dialogue.platform.settings import Settings
from dialogue.platform.temporal import USER, conversation_key, user_query, user_tag, workflow_id
from dialogue.security.identity import create_key
from dialogue.security.tokens import END_USER_AUDIENCE, END_USER_ISSUER, END_USER_PREFIX
from tests.conftest import api_client, served, served_llm
from tests.fake_llm import FakeLlm, Plan
from tests.test_agent import ORDER_STATUS, TOOLS, agent_stack, demo
from tests.waiting import eventually

ANNA, BEN = "NWC-100001", "NWC-100002"
"""Anna owns NW-482913 (shipped with DHL, tracking 00340434161094042557) and NW-105733; Ben owns neither."""
TRACKING = "00340434161094042557"


@pytest.fixture
async def llm() -> AsyncIterator[tuple[FakeLlm, str]]:
    """A stand-in model over real HTTP, for the agent's turns."""
    fake = FakeLlm()
    async with served_llm(fake) as url:
        yield fake, url


async def token_for(server: httpx.AsyncClient, user: str, ttl_seconds: int = 600) -> str:
    """What the integrator's server does for its signed-in user: a token minted with its own key."""
    minted = await server.post("/v1/end-user-tokens", json={"user": user, "ttl_seconds": ttl_seconds})
    assert minted.status_code == 201, minted.text
    assert minted.json()["user"] == user
    token: str = minted.json()["token"]
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def say(
    http: httpx.AsyncClient, token: str, conversation: str, text: str, **headers: str
) -> httpx.Response:
    return await http.post(
        f"/v1/conversations/{conversation}/turns", json={"text": text}, headers=bearer(token) | headers
    )


async def test_another_users_token_neither_reads_nor_talks_in_a_conversation(
    http: httpx.AsyncClient,
) -> None:
    anna, ben = await token_for(http, ANNA), await token_for(http, BEN)
    conversation, turn = f"anna-{uuid.uuid4().hex[:6]}", f"turn-{uuid.uuid4().hex[:6]}"
    first = await say(http, anna, conversation, "where is my order NW-482913?", **{"Idempotency-Key": turn})
    assert first.status_code == 200, first.text
    assert TRACKING in first.json()["reply"]["text"]  # Anna's own order: found
    mine = await http.get(f"/v1/conversations/{conversation}", headers=bearer(anna))
    assert mine.status_code == 200 and mine.json()["user"] == ANNA

    # Ben, with a valid token of the same tenant: every door of Anna's conversation is "no such conversation".
    for method, path in [
        ("GET", f"/v1/conversations/{conversation}"),
        ("GET", f"/v1/conversations/{conversation}/messages"),
        ("GET", f"/v1/conversations/{conversation}/turns/{turn}"),
        ("GET", f"/v1/conversations/{conversation}/turns/{turn}/lineage"),
        ("POST", f"/v1/conversations/{conversation}/turns/{turn}/feedback"),
        ("POST", f"/v1/conversations/{conversation}/end"),
    ]:
        body = {"rating": "down"} if path.endswith("feedback") else None
        answered = await http.request(method, path, json=body, headers=bearer(ben))
        assert answered.status_code == 404, f"{method} {path}: {answered.status_code} {answered.text}"
        assert answered.json()["error"]["code"] == "conversation_not_found"
    sent = await say(http, ben, conversation, "where is my order NW-482913?")
    assert sent.status_code == 404 and sent.json()["error"]["code"] == "conversation_not_found"
    # Not even by retrying Anna's turn under its id: the workflow refuses before it looks the reply up.
    retried = await say(http, ben, conversation, "hello", **{"Idempotency-Key": turn})
    assert retried.status_code == 404 and TRACKING not in retried.text
    listed = await http.get("/v1/conversations", headers=bearer(ben))
    assert conversation not in [c["conversation_id"] for c in listed.json()["items"]]
    # Anna's conversation is untouched: one turn, still active, hers in the list.
    state = (await http.get(f"/v1/conversations/{conversation}", headers=bearer(anna))).json()
    assert state["turn_count"] == 1 and state["status"] == "active"
    listed = await http.get("/v1/conversations", headers=bearer(anna))
    assert [c["conversation_id"] for c in listed.json()["items"]] == [conversation]
    # The integrator's server (its key speaks for the tenant) still sees it.
    assert (await http.get(f"/v1/conversations/{conversation}")).status_code == 200


async def test_a_users_conversations_are_listed_for_the_server_and_for_that_user_alone(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    anna, ben = await token_for(http, ANNA), await token_for(http, BEN)
    run = uuid.uuid4().hex[:6]
    hers = f"anna-{run}"  # started by Anna's own token
    assert (await say(http, anna, hers, "hello")).status_code == 200
    named = f"for-anna-{run}"  # started by the server's key, naming her
    started = await http.post("/v1/conversations", json={"id": named, "user": ANNA})
    assert started.status_code == 201, started.text
    assert (await say(http, ben, f"ben-{run}", "hello")).status_code == 200
    assert (
        await http.post(f"/v1/conversations/nobodys-{run}/turns", json={"text": "hello"})
    ).status_code == 200

    async def listed(headers: dict[str, str] | None = None, user: str = ANNA) -> list[str]:
        page = await http.get(f"/v1/users/{user}/conversations", headers=headers)
        assert page.status_code == 200, page.text
        return sorted(c["conversation_id"] for c in page.json()["items"])

    # The one the server started is listed once its workflow has written its index row.
    async def both_listed() -> bool:
        return len(await listed()) == 2

    await eventually(both_listed, "both of Anna's conversations", within=30)
    assert await listed() == sorted([hers, named])
    assert await listed(bearer(anna)) == sorted([hers, named])  # her own token: the same
    assert await listed(user=BEN) == [f"ben-{run}"]
    refused = await http.get(f"/v1/users/{ANNA}/conversations", headers=bearer(ben))
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    # Another tenant's key: a user of that name there has nothing.
    other = create_key(get_engine(settings.resolved_database_url), tenant="globex", scope="client")[1]
    assert await listed(bearer(other)) == []
    # Filters as on `/v1/conversations`.
    ended = await http.post(f"/v1/conversations/{hers}/end", headers=bearer(anna))
    assert ended.status_code in (200, 202), ended.text

    async def ended_ones() -> list[str]:
        page = await http.get(f"/v1/users/{ANNA}/conversations", params={"status": "ended"})
        return [c["conversation_id"] for c in page.json()["items"]]

    assert await eventually(ended_ones, "Anna's ended conversation listed as ended", within=30) == [hers]
    malformed = await http.get("/v1/users/an%20ann/conversations")
    assert malformed.status_code == 422


async def test_a_users_export_holds_all_of_theirs_and_nothing_of_anyone_elses(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    anna, ben = await token_for(http, ANNA), await token_for(http, BEN)
    run = uuid.uuid4().hex[:6]
    hers, his = f"anna-{run}", f"ben-{run}"
    answered = await say(
        http, anna, hers, "how much does express shipping cost?", **{"Idempotency-Key": "q1"}
    )
    assert answered.status_code == 200, answered.text
    rated = await http.post(
        f"/v1/conversations/{hers}/turns/q1/feedback",
        json={"rating": "up", "comment": "clear answer"},
        headers=bearer(anna),
    )
    assert rated.status_code in (200, 201), rated.text
    scored = await http.post(
        f"/v1/conversations/{hers}/satisfaction", json={"score": 4}, headers=bearer(anna)
    )
    assert scored.status_code in (200, 201), scored.text
    assert (await say(http, ben, his, "ben's own secret question about returns")).status_code == 200

    exported = await http.get(f"/v1/users/{ANNA}/export", headers=bearer(anna))
    assert exported.status_code == 200, exported.text
    document = exported.json()
    assert (document["tenant"], document["user"]) == ("default", ANNA)
    (conversation,) = document["conversations"]
    assert conversation["conversation_id"] == hers
    user_says, bot_says = conversation["messages"]
    assert user_says["role"] == "user" and user_says["text"] == "how much does express shipping cost?"
    assert bot_says["role"] == "bot" and bot_says["text"] == answered.json()["reply"]["text"]
    assert bot_says["rating"] == "up" and bot_says["lineage"]["documents"]  # what the answer stood on
    assert [(f["turn_id"], f["rating"], f["comment"]) for f in conversation["feedback"]] == [
        ("q1", "up", "clear answer")
    ]
    assert conversation["satisfaction"]["score"] == 4
    assert his not in exported.text and "secret question" not in exported.text
    # The server's key gets the same document; Ben's token gets nothing of Anna's.
    assert (await http.get(f"/v1/users/{ANNA}/export")).json()["conversations"] == document["conversations"]
    refused = await http.get(f"/v1/users/{ANNA}/export", headers=bearer(ben))
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    other = create_key(get_engine(settings.resolved_database_url), tenant="globex", scope="client")[1]
    elsewhere = await http.get(f"/v1/users/{ANNA}/export", headers=bearer(other))
    assert elsewhere.status_code == 200 and elsewhere.json()["conversations"] == []
    # An erased conversation is no longer held.
    assert (await http.delete(f"/v1/conversations/{hers}")).status_code == 204
    assert (await http.get(f"/v1/users/{ANNA}/export")).json()["conversations"] == []


async def test_erasing_a_user_leaves_nothing_of_theirs_in_temporal_or_the_store_and_nothing_of_others_goes(
    http: httpx.AsyncClient, client: Client, settings: Settings
) -> None:
    run = uuid.uuid4().hex[:6]
    # Users of this test alone: Temporal is shared by the tests, and erasing a user finds every
    # conversation it holds of theirs (others' tests' too).
    anna_id, ben_id = f"anna-{run}", f"ben-{run}"
    anna, ben = await token_for(http, anna_id), await token_for(http, ben_id)
    first, second, his = f"anna-a-{run}", f"anna-b-{run}", f"ben-{run}"
    secret = f"anna's private words {run}"
    assert (await say(http, anna, first, secret, **{"Idempotency-Key": "q1"})).status_code == 200
    assert (await http.post(f"/v1/conversations/{first}/satisfaction", json={"score": 2})).status_code == 201
    assert (await say(http, anna, second, "how much does express shipping cost?")).status_code == 200
    assert (await say(http, ben, his, f"ben's words {run}")).status_code == 200
    engine = get_engine(settings.resolved_database_url)

    async def anna_held() -> list[str]:
        exported = await http.get(f"/v1/users/{anna_id}/export")
        return sorted(c["conversation_id"] for c in exported.json()["conversations"])

    assert await eventually(anna_held, "both of Anna's conversations recorded", within=30) == [first, second]
    # Ben's token may not erase Anna; nor may a client's key while clients may not erase.
    refused = await http.delete(f"/v1/users/{anna_id}", headers=bearer(ben))
    assert refused.status_code == 403

    erased = await http.delete(f"/v1/users/{anna_id}")
    assert erased.status_code == 200, erased.text
    receipt = erased.json()
    assert (receipt["tenant"], receipt["user"]) == ("default", anna_id)
    assert sorted(receipt["conversations"]) == [first, second] and receipt["rows"]["owners"] == 2
    # Temporal holds no history of hers: reading one is refused as not found.
    for conversation in (first, second):
        handle = client.get_workflow_handle(workflow_id(conversation_key("default", conversation)))
        await history_deleted(handle)
    # The store holds nothing of hers: no row of any table has her words or her name.
    with engine.connect() as connection:
        for table in SQLModel.metadata.sorted_tables:
            if table.name in ("audit_entry", "api_key"):
                continue  # who erased whom (ids, no content); keys are the integrator's
            text = orjson.dumps([tuple(row) for row in connection.execute(table.select())], default=str)
            assert secret.encode() not in text and anna_id.encode() not in text, table.name
    assert await anna_held() == []
    answered = await http.get(f"/v1/conversations/{first}/messages")
    assert answered.status_code == 200 and answered.json()["items"] == []
    # Ben's conversation is untouched; erasing Anna again is safe and finds nothing left.
    bens = await http.get(f"/v1/conversations/{his}/messages", headers=bearer(ben))
    assert bens.json()["items"][0]["text"] == f"ben's words {run}"
    again = await http.delete(f"/v1/users/{anna_id}")
    assert again.status_code == 200 and again.json()["conversations"] == []
    with Session(engine) as session:
        entries = session.exec(
            select(AuditEntry).where(AuditEntry.action == "erase_user", AuditEntry.target == anna_id)
        ).all()
    assert [entry.detail["conversations"] for entry in entries] == [2, 0]


async def test_erasing_a_user_finds_through_temporal_a_conversation_the_store_never_recorded(
    http: httpx.AsyncClient, client: Client, settings: Settings
) -> None:
    run = uuid.uuid4().hex[:6]
    anna_id = f"anna-{run}"
    anna = await token_for(http, anna_id)
    lost = f"anna-lost-{run}"
    assert (await say(http, anna, lost, "hello, it's Anna")).status_code == 200
    engine = get_engine(settings.resolved_database_url)

    def recorded() -> list[str]:
        return store.conversations_of(engine, tenant="default", user=anna_id)

    assert await eventually(recorded, "her conversation recorded", within=30) == [
        conversation_key("default", lost)
    ]
    # As if the store had been down when it started: no record says the conversation is hers.
    with Session(engine) as session:
        session.exec(sql_delete(ConversationOwner).where(col(ConversationOwner.user) == anna_id))
        session.commit()
    assert recorded() == []
    # Temporal knows it as hers by a digest of tenant and user, never by her id.
    handle = client.get_workflow_handle(workflow_id(conversation_key("default", lost)))
    listed = (await handle.describe()).typed_search_attributes.get(USER)
    assert listed == user_tag("default", anna_id) and anna_id not in str(listed)

    async def visible() -> list[str]:
        return [w.id async for w in client.list_workflows(user_query("default", anna_id))]

    await eventually(visible, "her conversation in Temporal's visibility", within=30)
    erased = await http.delete(f"/v1/users/{anna_id}")
    assert erased.status_code == 200 and erased.json()["conversations"] == [lost], erased.text
    await history_deleted(handle)


async def history_deleted(handle: WorkflowHandle[Any, Any]) -> None:
    """Wait until reading the workflow's history is refused as not found: Temporal deletes a history in the
    background, soon after it is asked to (a loaded CI machine saw one still there at once)."""

    async def gone() -> bool:
        try:
            await handle.fetch_history()
        except RPCError as err:
            return err.status == RPCStatusCode.NOT_FOUND
        return False

    await eventually(gone, f"{handle.id}'s history deleted", within=30)


async def test_each_end_user_has_a_rate_limit_of_their_own(settings: Settings, client: Client) -> None:
    app = create_app(
        settings.model_copy(update={"end_user_rate_limit_per_second": 0.5, "end_user_rate_limit_burst": 3}),
        temporal=client,
    )
    async with api_client(app) as server:
        anna, ben = await token_for(server, ANNA), await token_for(server, BEN)
        statuses = [(await server.get("/v1/me", headers=bearer(anna))).status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        limited = await server.get("/v1/me", headers=bearer(anna))
        assert limited.json()["error"]["code"] == "rate_limited" and "this user" in limited.text
        assert int(limited.headers["retry-after"]) >= 1
        assert (await server.get("/v1/me", headers=bearer(ben))).status_code == 200  # Ben's bucket is full
        # The server's key is in the keys' bucket (off in the tests), however busy its users are.
        assert all([(await server.get("/v1/me")).status_code == 200 for _ in range(10)])


async def test_a_widget_session_is_minted_only_for_an_allowed_origin_and_only_as_a_visitor(
    settings: Settings, client: Client, worker: Worker
) -> None:
    """A site with no server of its own: the widget asks for an anonymous visitor's token from a page of an
    origin the deployment lets do so, for that origin's tenant; the visitor's browser goes on as the same
    visitor with the id it keeps, and that visitor reaches only their own conversations."""
    shop = "https://shop.example"
    app = create_app(settings.model_copy(update={"widget_origins": {shop: "acme"}}), temporal=client)
    async with api_client(app) as server:
        anonymous = {"Authorization": ""}
        refused = [
            await server.post("/v1/widget-sessions", json={}, headers=anonymous | extra)
            for extra in ({}, {"Origin": "https://evil.example"}, {"Origin": "https://shop.example.evil"})
        ]
        assert [r.status_code for r in refused] == [403, 403, 403]
        assert {r.json()["error"]["code"] for r in refused} == {"origin_not_allowed"}
        first = await server.post("/v1/widget-sessions", json={}, headers=anonymous | {"Origin": shop})
        assert first.status_code == 201, first.text
        session = first.json()
        assert session["tenant"] == "acme" and session["user"].startswith("visitor-")
        visitor = session["user"].removeprefix("visitor-")
        again = await server.post(
            "/v1/widget-sessions", json={"visitor": visitor}, headers=anonymous | {"Origin": shop}
        )
        assert again.json()["user"] == session["user"]  # the same visitor, a new token
        other = await server.post("/v1/widget-sessions", json={}, headers=anonymous | {"Origin": shop})
        assert other.json()["user"] != session["user"]
        bad = await server.post(
            "/v1/widget-sessions", json={"visitor": "NWC-100001"}, headers=anonymous | {"Origin": shop}
        )
        assert bad.status_code == 422  # a customer's id is not a visitor's: no one names a known user
        # The visitor's token is an end user's of the tenant: their own conversation, no one else's.
        token = session["token"]
        conversation = f"widget-{uuid.uuid4().hex[:6]}"
        assert (await say(server, token, conversation, "hello")).status_code == 200
        assert (
            await server.get(f"/v1/conversations/{conversation}", headers=bearer(token))
        ).status_code == 200
        stranger = other.json()["token"]
        assert (
            await server.get(f"/v1/conversations/{conversation}", headers=bearer(stranger))
        ).status_code == 404
        assert (
            await server.post("/v1/end-user-tokens", json={"user": "x"}, headers=bearer(token))
        ).status_code == 403
        # The site's origin may call the API from its pages (CORS), as the configured list's may.
        preflight = {"Origin": shop, "Access-Control-Request-Method": "POST"}
        allowed = await server.options("/v1/widget-sessions", headers=preflight)
        assert allowed.headers["access-control-allow-origin"] == shop


async def test_a_conversation_without_an_end_user_is_no_end_users(http: httpx.AsyncClient) -> None:
    conversation = f"server-{uuid.uuid4().hex[:6]}"
    assert (
        await http.post(f"/v1/conversations/{conversation}/turns", json={"text": "hello"})
    ).status_code == 200
    ben = await token_for(http, BEN)
    assert (await http.get(f"/v1/conversations/{conversation}", headers=bearer(ben))).status_code == 404
    assert (await say(http, ben, conversation, "hello")).status_code == 404


async def test_another_users_order_gets_no_order_data_from_the_flow(http: httpx.AsyncClient) -> None:
    ben = await token_for(http, BEN)
    conversation = f"ben-{uuid.uuid4().hex[:6]}"
    asked = await say(http, ben, conversation, "where is my order NW-482913?")
    assert asked.status_code == 200, asked.text
    reply = asked.json()["reply"]["text"]
    assert "couldn't find an order NW-482913" in reply  # as for an order that does not exist
    assert TRACKING not in asked.text and "DHL" not in asked.text and "headphones" not in asked.text


async def test_another_users_order_is_neither_read_nor_changed_by_the_agents_tools(
    client: Client, settings: Settings, tmp_path: Path, llm: tuple[FakeLlm, str]
) -> None:
    fake, url = llm
    fake.plans = [
        Plan(tool_calls=[("order_status", {"order_id": "NW-482913"})]),
        Plan(text="I could not find that order for you."),
        Plan(tool_calls=[("change_address", {"order_id": "NW-105733", "address": "Evil St. 1, Wien"})]),
        Plan(text="I could not change that order."),
    ]
    async with agent_stack(client, settings, tmp_path, url, tools=TOOLS) as chat:
        ben = await token_for(chat.http, BEN)
        conversation = f"ben-agent-{uuid.uuid4().hex[:6]}"
        looked = await say(chat.http, ben, conversation, "where is my order NW-482913?")
        assert looked.status_code == 200, looked.text
        [outcome] = looked.json()["lineage"]["agent"][0]["outcomes"]
        assert not outcome["ok"] and outcome["error"] == "no order 'NW-482913'"  # as for no such order
        # Nothing of the order reached the model either.
        assert all(TRACKING not in str(request["messages"]) for request in fake.requests)
        asked = await say(chat.http, ben, conversation, "please send my order NW-105733 to Evil St. 1, Wien")
        [pending] = asked.json()["approvals"]
        decided = await chat.http.post(
            f"/v1/conversations/{conversation}/approvals/{pending['call_id']}",
            json={"approve": True},
            headers=bearer(ben),  # Ben approves his own conversation's call: the tool still refuses
        )
        assert decided.status_code == 200, decided.text
        [changed] = decided.json()["reply"]["lineage"]["agent"][-1]["outcomes"]
        assert not changed["ok"] and changed["error"] == "no order 'NW-105733'"
        assert demo.Shop(chat.settings.data_dir).actions() == []  # the shop changed nothing


DEMO_MCP = Path(__file__).resolve().parents[2] / "examples" / "demo" / "mcp_store.py"


async def test_http_and_mcp_tools_get_the_verified_user_and_no_one_can_name_another(
    client: Client, settings: Settings, tmp_path: Path, llm: tuple[FakeLlm, str]
) -> None:
    fake, url = llm
    fake.plans = [
        Plan(tool_calls=[("whoami", {}), ("opening_hours", {"store": "Hamburg"})]),
        Plan(text="Done."),
    ]
    seen: list[str | None] = []
    service = FastAPI()

    @service.get("/me")
    async def me(request: Request) -> dict[str, Any]:
        seen.append(request.headers.get("x-end-user"))
        return {"ok": True}

    async with served(service) as base_url:
        whoami = {
            "name": "whoami",
            "description": "Who the shop's service serves.",
            "kind": "http",
            "parameters": {"type": "object", "properties": {}},
            # The bot (or a change to it) tries to speak for someone else: the worker's header wins.
            "http": {
                "method": "GET",
                "url": f"{base_url}/me",
                "headers": {"x-end-user": "admin"},
                "private_network": True,
            },
        }
        stores = {"name": "stores", "command": ["{python}", str(DEMO_MCP)], "allow": ["opening_hours"]}
        async with agent_stack(
            client, settings, tmp_path, url, tools=[ORDER_STATUS, whoami], mcp_servers=[stores]
        ) as chat:
            anna = await token_for(chat.http, ANNA)
            asked = await say(
                chat.http, anna, f"anna-tools-{uuid.uuid4().hex[:6]}", "who am I, and Hamburg's hours?"
            )
            assert asked.status_code == 200, asked.text
    assert seen == [ANNA]
    told = [m["content"] for m in fake.requests[-1]["messages"] if m["role"] == "tool"]
    # The MCP server got the user in _meta and echoed it; the bot's privacy policy redacts a customer id in
    # every tool's result before the model sees it, so the echo arrives as its placeholder, never as null.
    assert any(
        '"end_user":"[CUSTOMER_ID' in content or f'"end_user":"{ANNA}"' in content for content in told
    ), told


async def test_a_user_approval_is_decided_by_the_conversations_user_alone(
    client: Client, settings: Settings, tmp_path: Path, llm: tuple[FakeLlm, str]
) -> None:
    fake, url = llm
    fake.plans = [
        Plan(tool_calls=[("change_address", {"order_id": "NW-105733", "address": "Ringstr. 5, 1010 Wien"})]),
        Plan(text="Done: your order goes to Ringstr. 5."),
    ]
    async with agent_stack(client, settings, tmp_path, url, tools=TOOLS) as chat:
        engine = get_engine(chat.settings.resolved_database_url)
        anna, ben = await token_for(chat.http, ANNA), await token_for(chat.http, BEN)
        other_tenant = create_key(engine, tenant="globex", scope="admin")[1]
        conversation = f"anna-approval-{uuid.uuid4().hex[:6]}"
        asked = await say(
            chat.http, anna, conversation, "please send my order NW-105733 to Ringstr. 5, 1010 Wien"
        )
        [pending] = asked.json()["approvals"]
        assert pending["approval"] == "user"
        path = f"/v1/conversations/{conversation}/approvals/{pending['call_id']}"

        by_ben = await chat.http.post(path, json={"approve": True}, headers=bearer(ben))
        assert by_ben.status_code == 404, by_ben.text
        by_other_tenant = await chat.http.post(path, json={"approve": True}, headers=bearer(other_tenant))
        assert by_other_tenant.status_code == 404, by_other_tenant.text
        # A server-side client key of the tenant (what any end user could be given before): not Anna.
        by_server = await chat.user.post(path, json={"approve": True})
        assert by_server.status_code == 403 and by_server.json()["error"]["code"] == "forbidden"
        # The workflow holds it whatever calls its update: the validator compares the decider with the user.
        handle = client.get_workflow_handle(workflow_id(conversation_key("default", conversation)))
        for forged, refusal in [
            (
                ApprovalRequest(call_id=pending["call_id"], approve=True, by="x", user=BEN),
                NOT_YOUR_CONVERSATION,
            ),
            (ApprovalRequest(call_id=pending["call_id"], approve=True, by="x"), "ApprovalForbidden"),
        ]:
            with pytest.raises(WorkflowUpdateFailedError) as refused:
                await handle.execute_update(Updates.APPROVE, forged, result_type=ApprovalReply)
            assert isinstance(refused.value.cause, ApplicationError) and refused.value.cause.type == refusal
        assert demo.Shop(chat.settings.data_dir).actions() == []  # nothing ran on those

        by_anna = await chat.http.post(path, json={"approve": True}, headers=bearer(anna))
        assert by_anna.status_code == 200, by_anna.text
        [changed] = demo.Shop(chat.settings.data_dir).actions()
        assert changed["order_id"] == "NW-105733" and changed["detail"] == "Ringstr. 5, 1010 Wien"
        outcome = by_anna.json()["reply"]["lineage"]["agent"][-1]["outcomes"][0]
        assert outcome["approval"]["by"] == f"user:default/{ANNA}" and outcome["approval"]["role"] == "user"


async def test_typed_text_cannot_overwrite_a_slot_the_integrators_server_set(http: httpx.AsyncClient) -> None:
    conversation = f"trusted-{uuid.uuid4().hex[:6]}"
    # The integrator's server starts the conversation for Anna, with the order she is looking at.
    started = await http.post(
        "/v1/conversations",
        json={"id": conversation, "user": ANNA, "slots": {"order_id": "NW-482913"}},
    )
    assert started.status_code == 201, started.text
    anna = await token_for(http, ANNA)
    asked = await say(http, anna, conversation, "where is my order? my order is NW-105733")
    assert asked.status_code == 200, asked.text
    assert "NW-482913" in asked.json()["reply"]["text"] and TRACKING in asked.json()["reply"]["text"]
    assert "NW-105733" not in asked.json()["reply"]["text"]
    state = (await http.get(f"/v1/conversations/{conversation}", headers=bearer(anna))).json()
    assert state["slots"]["order_id"] == "NW-482913" and state["trusted_slots"] == ["order_id"]
    again = await say(http, anna, conversation, "my order is NW-105733")
    assert "NW-105733" not in again.json()["reply"]["text"]
    state = (await http.get(f"/v1/conversations/{conversation}", headers=bearer(anna))).json()
    assert state["slots"]["order_id"] == "NW-482913"


async def test_slots_an_end_user_gives_are_not_trusted_and_name_no_one_else(http: httpx.AsyncClient) -> None:
    anna = await token_for(http, ANNA)
    own = await http.post(
        "/v1/conversations", json={"slots": {"order_id": "NW-482913"}}, headers=bearer(anna)
    )
    assert own.status_code == 201
    state = (
        await http.get(f"/v1/conversations/{own.json()['conversation_id']}", headers=bearer(anna))
    ).json()
    assert state["user"] == ANNA and state["trusted_slots"] == []
    for_ben = await http.post("/v1/conversations", json={"user": BEN}, headers=bearer(anna))
    assert for_ben.status_code == 403


def _forged(secret: str, **claims: Any) -> str:
    now = int(time.time())
    body = {
        "iss": END_USER_ISSUER,
        "aud": END_USER_AUDIENCE,
        "sub": ANNA,
        "tenant": "default",
        "iat": now,
        "exp": now + 600,
    }
    return END_USER_PREFIX + jwt.encode(body | claims, secret, algorithm="HS256")


async def test_an_expired_tampered_or_foreign_end_user_token_is_refused(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    good = await token_for(http, BEN)
    assert (await http.get("/v1/me", headers=bearer(good))).json()["user"] == BEN
    secret = settings.resolve_end_user_token_secret()
    assert secret is not None
    header, payload, signature = good.removeprefix(END_USER_PREFIX).split(".")
    claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    as_anna = base64.urlsafe_b64encode(orjson.dumps(claims | {"sub": ANNA})).rstrip(b"=").decode()
    now = int(time.time())
    refused = {
        "expired": _forged(secret, iat=now - 1200, exp=now - 600),
        "tampered (Ben made Anna)": f"{END_USER_PREFIX}{header}.{as_anna}.{signature}",
        "signed with another secret": _forged("x" * 48),
        "another audience": _forged(secret, aud="someone-else"),
        "alg none": END_USER_PREFIX + jwt.encode(claims | {"sub": ANNA}, "", algorithm="none"),
        "living past the hour": _forged(secret, exp=now + 7200),
        "no prefix": good.removeprefix(END_USER_PREFIX),
    }
    for what, token in refused.items():
        answered = await http.get("/v1/me", headers=bearer(token))
        assert answered.status_code == 401, f"{what}: {answered.status_code}"
        assert answered.json()["error"]["code"] == "invalid_credentials"
    # A valid end-user token is a client, and mints nothing.
    assert (await http.get("/v1/keys", headers=bearer(good))).status_code == 403
    minted = await http.post("/v1/end-user-tokens", json={"user": ANNA}, headers=bearer(good))
    assert minted.status_code == 403
    # A token lives an hour at most.
    assert (
        await http.post("/v1/end-user-tokens", json={"user": ANNA, "ttl_seconds": 7200})
    ).status_code == 422


async def test_an_identity_providers_token_for_an_end_user_is_that_user_and_a_client(
    client: Client, settings: Settings, worker: Worker
) -> None:
    secret = "s" * 48
    with_idp = settings.model_copy(update={"jwt_hs256_secret": SecretStr(secret)})
    now = int(time.time())
    claims = {"sub": BEN, "tenant": "default", "scope": "admin", "end_user": True, "exp": now + 600}
    token = jwt.encode(claims, secret, algorithm="HS256")
    async with api_client(create_app(with_idp, temporal=client)) as http:
        me = (await http.get("/v1/me", headers=bearer(token))).json()
        assert me["user"] == BEN and me["scope"] == "client"  # an end user is never more than a client
        asked = await say(http, token, f"idp-{uuid.uuid4().hex[:6]}", "where is my order NW-482913?")
        assert asked.status_code == 200 and TRACKING not in asked.text
