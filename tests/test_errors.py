"""The error table (`api.errors.ERRORS`), walked: every code it lists is made to happen over real HTTP,
against the real Temporal and store, and answers with the table's status, code and `Retry-After`."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from temporalio.client import Client
from temporalio.worker import Worker

from api import create_app
from api.errors import ERRORS
from dialogue.model.contracts import WORKFLOW_TYPE, ChannelAddress, Delivery
from dialogue.platform.channels import ledger
from dialogue.platform.channels.config import TelegramChannel
from dialogue.platform.codec import EncryptionCodec, PayloadKeys
from dialogue.platform.db import get_engine
from dialogue.platform.settings import Settings
from dialogue.platform.temporal import conversation_key, workflow_id
from dialogue.security.identity import create_key
from tests.conftest import api_client, free_port, served_llm, worker_for
from tests.fake_llm import FakeLlm, Plan
from tests.slow_clients import SlowClient
from tests.test_agent import TOOLS, agent_stack
from tests.waiting import eventually

SLOW_QUESTION = "How much does express shipping cost?"  # answered by the model, slowly here


@dataclass
class Stack:
    """The default stack (API, worker, Temporal, store) and what a scenario needs to build its own."""

    http: httpx.AsyncClient
    client: Client
    settings: Settings
    tmp_path: Path

    def on_own_queue(self, name: str) -> Settings:
        return self.settings.model_copy(update={"task_queue": f"{self.settings.task_queue}-{name}"})

    def new_id(self) -> str:
        return f"err-{uuid.uuid4().hex[:10]}"

    async def conversation(self, **body: Any) -> str:
        conversation_id = self.new_id()
        created = await self.http.post("/v1/conversations", json={"id": conversation_id, **body})
        assert created.status_code == 201, created.text
        return conversation_id

    @asynccontextmanager
    async def slow_stack(
        self, delay: float = 2.0, **changes: Any
    ) -> AsyncIterator[tuple[httpx.AsyncClient, FakeLlm]]:
        """An API and worker whose model answers after `delay` seconds, with these settings changed; and
        that model, which records each request as it arrives."""
        slow = FakeLlm(plans=[Plan(text="It costs 12.90 euros [1].", delay=delay)])
        async with served_llm(slow) as url:
            changed = self.settings.model_copy(
                update={
                    "generator": "openai",
                    "llm_base_url": url,
                    "llm_model": "slow",
                    "task_queue": f"{self.settings.task_queue}-slow",  # beside the default worker's
                    **changes,
                }
            )
            async with (
                worker_for(self.client, changed),
                api_client(create_app(changed, temporal=self.client)) as http,
            ):
                yield http, slow

    @asynccontextmanager
    async def api(self, **changes: Any) -> AsyncIterator[httpx.AsyncClient]:
        """Another API on the same Temporal (and the default worker), with these settings changed."""
        async with api_client(
            create_app(self.settings.model_copy(update=changes), temporal=self.client)
        ) as http:
            yield http


Scenario = Callable[[Stack], Awaitable[httpx.Response]]
SCENARIOS: dict[str, Scenario] = {}


def scenario(code: str) -> Callable[[Scenario], Scenario]:
    def register(make: Scenario) -> Scenario:
        SCENARIOS[code] = make
        return make

    return register


# The request itself.


@scenario("invalid_request")
async def _(s: Stack) -> httpx.Response:
    return await s.http.post(f"/v1/conversations/{s.new_id()}/turns", json={"txet": "hello"})


@scenario("invalid_turn")
async def _(s: Stack) -> httpx.Response:
    too_long = "x" * (s.settings.max_text_chars + 1)
    return await s.http.post(f"/v1/conversations/{s.new_id()}/turns", json={"text": too_long})


@scenario("idempotency_conflict")
async def _(s: Stack) -> httpx.Response:
    return await s.http.post(
        f"/v1/conversations/{s.new_id()}/turns",
        json={"text": "hello", "idempotency_key": "one"},
        headers={"Idempotency-Key": "two"},
    )


@scenario("invalid_text")
async def _(s: Stack) -> httpx.Response:
    return await s.http.post("/v1/nlu/parse", json={"text": "x" * (s.settings.max_text_chars + 1)})


@scenario("bad_request")
async def _(s: Stack) -> httpx.Response:
    return await s.http.post(
        "/v1/conversations", content=b"\xff\xfe{", headers={"Content-Type": "application/json"}
    )


@scenario("content_too_large")
async def _(s: Stack) -> httpx.Response:
    body = b'{"text": "' + b"x" * s.settings.max_body_bytes + b'"}'
    return await s.http.post(
        f"/v1/conversations/{s.new_id()}/turns", content=body, headers={"Content-Type": "application/json"}
    )


@scenario("request_timeout")
async def _(s: Stack) -> httpx.Response:
    async with s.api(body_read_seconds=1) as http:
        trickler = await SlowClient.start(
            str(http.base_url),
            f"/v1/conversations/{s.new_id()}/turns",
            headers={"Authorization": http.headers["Authorization"]},
        )
        try:
            return await trickler.response()
        finally:
            await trickler.close()


@scenario("unsupported_media_type")
async def _(s: Stack) -> httpx.Response:
    return await s.http.post(
        "/codec/decode", content=b'{"payloads": []}', headers={"Content-Type": "text/plain"}
    )


@scenario("undecodable_payload")
async def _(s: Stack) -> httpx.Response:
    stranger = EncryptionCodec(PayloadKeys.generate("lost-key"))
    from temporalio.api.common.v1 import Payload

    (sealed,) = await stranger.encode([Payload(metadata={"encoding": b"json/plain"}, data=b'"x"')])
    import base64

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    body = {
        "payloads": [{"metadata": {k: b64(v) for k, v in sealed.metadata.items()}, "data": b64(sealed.data)}]
    }
    return await s.http.post("/codec/decode", json=body)


@scenario("invalid_payloads")
async def _(s: Stack) -> httpx.Response:
    return await s.http.post(
        "/codec/decode", content=b'{"payloads": 5}', headers={"Content-Type": "application/json"}
    )


@scenario("not_found")
async def _(s: Stack) -> httpx.Response:
    return await s.http.get("/v1/no-such-route")


@scenario("method_not_allowed")
async def _(s: Stack) -> httpx.Response:
    response = await s.http.put("/v1/conversations")
    assert set(response.headers["Allow"].split(", ")) == {"GET", "POST"}
    return response


# Who is calling.


@scenario("unauthenticated")
async def _(s: Stack) -> httpx.Response:
    return await s.http.get("/v1/me", headers={"Authorization": ""})


@scenario("invalid_credentials")
async def _(s: Stack) -> httpx.Response:
    return await s.http.get("/v1/me", headers={"Authorization": "Bearer dk_not-a-key"})


@scenario("forbidden")
async def _(s: Stack) -> httpx.Response:
    _, key = create_key(get_engine(s.settings.resolved_database_url), tenant="default", scope="client")
    return await s.http.get("/v1/keys", headers={"Authorization": f"Bearer {key}"})


# Limits.


@scenario("rate_limited")
async def _(s: Stack) -> httpx.Response:
    async with s.api(rate_limit_per_second=0.01, rate_limit_burst=1) as http:
        assert (await http.get("/v1/me")).status_code == 200
        return await http.get("/v1/me")


@scenario("overloaded")
async def _(s: Stack) -> httpx.Response:
    async with s.slow_stack(max_turns_in_flight=1) as (http, model):
        running = asyncio.create_task(
            http.post(f"/v1/conversations/{s.new_id()}/turns", json={"text": SLOW_QUESTION})
        )
        await eventually(lambda: model.requests, "the model to be asked for the running turn")
        shed = await http.post(f"/v1/conversations/{s.new_id()}/turns", json={"text": "hello"})
        await running
        return shed


@scenario("too_many_streams")
async def _(s: Stack) -> httpx.Response:
    conversation_id = await s.conversation()
    async with s.api(max_streams_per_key=1) as http:
        url = f"/v1/conversations/{conversation_id}/events"
        async with http.stream("GET", url) as first:
            assert first.status_code == 200
            return await http.get(url)


@scenario("turn_queue_full")
async def _(s: Stack) -> httpx.Response:
    async with s.slow_stack(max_queued_turns=1, double_text="enqueue") as (http, model):
        url = f"/v1/conversations/{s.new_id()}/turns"
        running = asyncio.create_task(http.post(url, json={"text": SLOW_QUESTION}))
        await eventually(lambda: model.requests, "the model to be asked for the running turn")
        full = await http.post(url, json={"text": "hello"})
        await running
        return full


@scenario("too_many_turns")
async def _(s: Stack) -> httpx.Response:
    # Temporal admits 10 updates in flight per workflow; the conversation would queue 50. Its client
    # retries RESOURCE_EXHAUSTED for about 15 s before giving up: the first turn holds the conversation
    # until its deadline (20 s), and the API waits for the reply longer than the retries.
    async with s.slow_stack(
        delay=22.0, max_queued_turns=50, double_text="enqueue", turn_timeout_seconds=25
    ) as (http, _):
        url = f"/v1/conversations/{s.new_id()}/turns"
        assert (await http.post(url, json={"text": "hello"})).status_code == 200  # it exists
        sent = [asyncio.create_task(http.post(url, json={"text": SLOW_QUESTION})) for _ in range(12)]
        try:
            for done in asyncio.as_completed(sent):
                response = await done
                if response.status_code == 429:
                    return response
            raise AssertionError("Temporal admitted 12 turns in flight")
        finally:
            for task in sent:
                task.cancel()
            await asyncio.gather(*sent, return_exceptions=True)


# The conversation.


@scenario("conversation_not_found")
async def _(s: Stack) -> httpx.Response:
    return await s.http.get(f"/v1/conversations/{s.new_id()}")


@scenario("memory_item_not_found")
async def _(s: Stack) -> httpx.Response:
    return await s.http.get(f"/v1/users/{s.new_id()}/memory/items/name")


@scenario("memory_not_consented")
async def _(s: Stack) -> httpx.Response:
    return await s.http.put(f"/v1/users/{s.new_id()}/memory/items/name", json={"value": "Ann"})


@scenario("nothing_to_score")
async def _(s: Stack) -> httpx.Response:
    conversation_id = await s.conversation()  # no turn yet
    return await s.http.post(f"/v1/conversations/{conversation_id}/satisfaction", json={"score": 4})


@scenario("conversation_ended")
async def _(s: Stack) -> httpx.Response:
    conversation_id = await s.conversation()
    assert (await s.http.post(f"/v1/conversations/{conversation_id}/end")).status_code == 200
    return await s.http.post(f"/v1/conversations/{conversation_id}/turns", json={"text": "hello"})


@scenario("conversation_exists")
async def _(s: Stack) -> httpx.Response:
    conversation_id = await s.conversation()
    return await s.http.post("/v1/conversations", json={"id": conversation_id})


@scenario("conversation_unavailable")
async def _(s: Stack) -> httpx.Response:
    conversation_id = await s.conversation()
    await s.client.get_workflow_handle(workflow_id(conversation_key("default", conversation_id))).terminate(
        "test"
    )
    return await s.http.post(f"/v1/conversations/{conversation_id}/turns", json={"text": "hello"})


@scenario("conversation_busy")
async def _(s: Stack) -> httpx.Response:
    # A workflow whose task keeps failing (an input its code cannot read): Temporal refuses an update at
    # once (FAILED_PRECONDITION), and a query waits for an answer that does not come (QUERY_TIMEOUT).
    conversation_id = s.new_id()
    handle = await s.client.start_workflow(
        WORKFLOW_TYPE,
        {"conversation_id": conversation_id, "max_text_chars": "not a number"},
        id=workflow_id(conversation_key("default", conversation_id)),
        task_queue=s.settings.task_queue,
    )
    try:
        turn = await s.http.post(f"/v1/conversations/{conversation_id}/turns", json={"text": "hello"})
        state = await s.http.get(f"/v1/conversations/{conversation_id}")
    finally:
        await handle.terminate("test")
    assert (state.status_code, state.json()["error"]["code"]) == (503, "conversation_busy"), state.text
    return turn


@scenario("turn_in_progress")
async def _(s: Stack) -> httpx.Response:
    async with s.slow_stack(double_text="reject") as (http, model):
        url = f"/v1/conversations/{s.new_id()}/turns"
        running = asyncio.create_task(http.post(url, json={"text": SLOW_QUESTION}))
        await eventually(lambda: model.requests, "the model to be asked for the running turn")
        refused = await http.post(url, json={"text": "hello"})
        await running
        return refused


@scenario("turn_not_found")
async def _(s: Stack) -> httpx.Response:
    conversation_id = await s.conversation()
    return await s.http.get(f"/v1/conversations/{conversation_id}/turns/no-such-turn")


@scenario("turn_timeout")
async def _(s: Stack) -> httpx.Response:
    async with s.slow_stack(turn_timeout_seconds=0.5) as (http, _):
        return await http.post(f"/v1/conversations/{s.new_id()}/turns", json={"text": SLOW_QUESTION})


@scenario("update_timeout")
async def _(s: Stack) -> httpx.Response:
    async with s.slow_stack(delay=3.0, turn_timeout_seconds=1.0) as (http, _):
        base = f"/v1/conversations/{s.new_id()}"
        accepted = await http.post(f"{base}/turns", json={"text": SLOW_QUESTION, "wait": False})
        assert accepted.status_code == 202
        return await http.post(f"{base}/handoff", json={"agent": "ada"})  # waits for the running turn


@scenario("turn_failed")
async def _(s: Stack) -> httpx.Response:
    # The workflow is terminated while the turn runs: Temporal fails the accepted update.
    async with s.slow_stack(delay=3.0) as (http, model):
        conversation_id = s.new_id()
        running = asyncio.create_task(
            http.post(f"/v1/conversations/{conversation_id}/turns", json={"text": SLOW_QUESTION})
        )
        await eventually(lambda: model.requests, "the model to be asked for the running turn")
        await s.client.get_workflow_handle(
            workflow_id(conversation_key("default", conversation_id))
        ).terminate("test")
        return await running


@scenario("feature_disabled")
async def _(s: Stack) -> httpx.Response:
    conversation_id = await s.conversation()
    async with s.api(flags={"handoff": False}) as http:
        return await http.post(f"/v1/conversations/{conversation_id}/handoff", json={"agent": "ada"})


@scenario("not_handed_off")
async def _(s: Stack) -> httpx.Response:
    conversation_id = await s.conversation()
    return await s.http.post(f"/v1/conversations/{conversation_id}/agent-messages", json={"text": "Hi"})


@scenario("approval_not_found")
async def _(s: Stack) -> httpx.Response:
    conversation_id = await s.conversation()
    return await s.http.post(
        f"/v1/conversations/{conversation_id}/approvals/call_nope", json={"approve": True}
    )


@scenario("approval_decided")
async def _(s: Stack) -> httpx.Response:
    fake = FakeLlm(
        plans=[
            Plan(
                tool_calls=[
                    ("start_return", {"order_id": "NW-654321", "reason": "too quiet"}),
                    ("start_return", {"order_id": "NW-105733", "reason": "too loud"}),
                ]
            ),
            Plan(text="Both returns are open."),
        ]
    )
    async with (
        served_llm(fake) as url,
        agent_stack(s.client, s.on_own_queue("agent"), s.tmp_path, url, tools=TOOLS) as chat,
    ):
        conversation_id = s.new_id()
        asked = await chat.user.post(
            f"/v1/conversations/{conversation_id}/turns",
            json={"text": "I want to return my speaker, order NW-654321"},
        )
        first = asked.json()["approvals"][0]["call_id"]
        decide = f"/v1/conversations/{conversation_id}/approvals/{first}"
        assert (await chat.http.post(decide, json={"approve": True})).status_code == 200
        return await chat.http.post(decide, json={"approve": False})  # the other one still waits


@scenario("tool_result_not_found")
async def _(s: Stack) -> httpx.Response:
    conversation_id = await s.conversation()
    return await s.http.get(f"/v1/conversations/{conversation_id}/tool-results/call_nope")


# The knowledge base and keys.


@scenario("document_not_found")
async def _(s: Stack) -> httpx.Response:
    return await s.http.get("/v1/knowledge/documents/no-such-document")


@scenario("document_conflict")
async def _(s: Stack) -> httpx.Response:
    # Two requests create the same new document at the same moment: one wins, the other is told to retry.
    for _ in range(20):
        document_id = s.new_id()
        body = {"id": document_id, "text": "Returns are free within 30 days. " * 20, "title": "Returns"}
        answers = await asyncio.gather(*(s.http.post("/v1/knowledge/documents", json=body) for _ in range(4)))
        conflicts = [a for a in answers if a.status_code == 409]
        if conflicts:
            return conflicts[0]
    raise AssertionError("no two writes of one document ever met")


@scenario("key_not_found")
async def _(s: Stack) -> httpx.Response:
    return await s.http.delete("/v1/keys/no-such-key")


@scenario("bot_not_found")
async def _(s: Stack) -> httpx.Response:
    return await s.http.post("/v1/conversations", json={"bot": "no-such-bot"})


@scenario("invalid_release")
async def _(s: Stack) -> httpx.Response:
    # A version of the deployment's bot, published, cannot be its canary before it has a stable version.
    from dialogue.apps.publishing import publish

    published = await asyncio.to_thread(publish, s.settings, s.settings.bot_path, actor="t", run_tests=False)
    return await s.http.post(
        f"/v1/bots/{published.ref.bot}/release", json={"version": published.ref.version, "percent": 10}
    )


@scenario("origin_not_allowed")
async def _(s: Stack) -> httpx.Response:
    # A page of another origin than the one the deployment lets start anonymous widget sessions.
    async with s.api(widget_origins={"https://shop.example": "acme"}) as http:
        return await http.post("/v1/widget-sessions", json={}, headers={"Origin": "https://evil.example"})


@scenario("too_many_reminders")
async def _(s: Stack) -> httpx.Response:
    conversation_id = await s.conversation()
    url = f"/v1/conversations/{conversation_id}/reminders"
    for n in range(20):  # as many as a conversation holds
        assert (await s.http.post(url, json={"text": f"Reminder {n}", "in_seconds": 3600})).status_code == 201
    return await s.http.post(url, json={"text": "One more.", "in_seconds": 3600})


@scenario("reminder_not_found")
async def _(s: Stack) -> httpx.Response:
    conversation_id = await s.conversation()
    return await s.http.delete(f"/v1/conversations/{conversation_id}/reminders/no-such-reminder")


@scenario("invalid_signature")
async def _(s: Stack) -> httpx.Response:
    # A request to a Telegram channel's webhook without the secret token Telegram sends.
    channel = TelegramChannel(platform="telegram", secret_token="the-secret", bot_token="1:x")
    async with s.api(channels={"shop-telegram": channel}) as http:
        return await http.post("/v1/channels/shop-telegram", json={"update_id": 1})


@scenario("channel_not_found")
async def _(s: Stack) -> httpx.Response:
    return await s.http.post("/v1/channels/no-such-channel", json={})


@scenario("delivery_not_found")
async def _(s: Stack) -> httpx.Response:
    return await s.http.post("/v1/deliveries/no-such-delivery/resend")


@scenario("delivery_not_dead")
async def _(s: Stack) -> httpx.Response:
    # A delivery the platform took: only a dead letter is resent.
    delivery = Delivery(
        id=f"default/{s.new_id()}/t1",
        conversation_id="default/c",
        address=ChannelAddress(channel="shop-telegram", platform="telegram", to="42"),
        text="Hello",
    )
    engine = get_engine(s.settings.resolved_database_url)
    await asyncio.to_thread(ledger.begin, engine, delivery, "default")
    await asyncio.to_thread(ledger.finish, engine, delivery.id, "sent", platform_id="7")
    return await s.http.post(f"/v1/deliveries/{delivery.id}/resend")


@scenario("not_configured")
async def _(s: Stack) -> httpx.Response:
    # In production with no end-user token secret set: no token is minted (nor made up in one replica).
    async with s.api(environment="production", end_user_token_secret=None) as http:
        return await http.post("/v1/end-user-tokens", json={"user": "anna"})


# Dependencies.


@scenario("store_unavailable")
async def _(s: Stack) -> httpx.Response:
    async with s.api(database_url=f"postgresql+psycopg://root@127.0.0.1:{free_port()}/test") as http:
        return await http.get("/v1/conversations")


@scenario("temporal_unavailable")
async def _(s: Stack) -> httpx.Response:
    down = s.settings.model_copy(update={"temporal_address": f"127.0.0.1:{free_port()}"})
    async with api_client(create_app(down)) as http:
        return await http.post(f"/v1/conversations/{s.new_id()}/turns", json={"text": "hello"})


@scenario("internal_error")
async def _(s: Stack) -> httpx.Response:
    # Nothing in the API fails this way on purpose: a route that has a bug stands in for one.
    app = create_app(s.settings, temporal=s.client)
    assert isinstance(app, FastAPI)

    async def broken() -> None:
        raise RuntimeError("a bug, with a secret in its message")

    app.add_api_route("/v1/broken", broken)
    async with api_client(app) as http:
        response = await http.get("/v1/broken")
    assert "secret" not in response.text
    return response


def test_every_code_of_the_table_has_a_scenario() -> None:
    assert sorted(SCENARIOS) == sorted(ERRORS)


@pytest.mark.parametrize("code", sorted(ERRORS))
async def test_the_code_happens_over_http_as_the_table_says(
    code: str, http: httpx.AsyncClient, client: Client, settings: Settings, worker: Worker, tmp_path: Path
) -> None:
    entry = ERRORS[code]
    response = await SCENARIOS[code](Stack(http, client, settings, tmp_path))
    assert (response.status_code, response.json()["error"]["code"]) == (entry.status, code), response.text
    if code == "rate_limited":  # the seconds until the key's bucket holds a request again
        assert float(response.headers["Retry-After"]) > 0
    else:
        assert response.headers.get("Retry-After") == entry.retry_after
    assert response.json()["error"]["message"]
    if entry.status == 401:
        assert response.headers["WWW-Authenticate"] == "Bearer"
