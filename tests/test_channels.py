"""Messaging platforms against the real stack: a platform's webhook request (its documented sample payload,
signed as it signs) becomes a turn, and the reply reaches the platform's API (a stand-in speaking its wire
format, over HTTP) from the conversation's workflow; with a wrong signature, a stale timestamp or a
replayed message, nothing more happens. A platform that is down gets the message once it is back, also
when the worker delivering it was SIGKILLed meanwhile; one that refuses it for good leaves a dead letter
an admin resends."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import TypeAdapter
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment

from activities.deliver import DeliveryActivities
from api import create_app
from dialogue.model.contracts import ChannelAddress, Delivery
from dialogue.platform.channels import ledger
from dialogue.platform.channels.config import ChannelConfig
from dialogue.platform.db import get_engine
from dialogue.platform.settings import Settings
from tests.conftest import api_client, worker_for
from tests.platforms import (
    WHATSAPP_VERIFY,
    PlatformStandIn,
    Webhook,
    channels,
    slack_message,
    slack_signed,
    telegram_message,
    twilio_message,
    whatsapp_message,
)
from tests.processes import WorkerProcess

PUBLIC = "https://bot.example.com"
"""The API's address as the platforms see it (Twilio signs it)."""
QUESTION = "how much does express shipping cost?"
CHANNELS = TypeAdapter(dict[str, ChannelConfig])


def configured(settings: Settings, stand_in_url: str) -> Settings:
    return settings.model_copy(update={"channels": CHANNELS.validate_python(channels(stand_in_url, PUBLIC))})


@pytest.fixture
async def channel_api(
    client: Client, settings: Settings, stand_in: tuple[PlatformStandIn, str]
) -> AsyncIterator[tuple[httpx.AsyncClient, PlatformStandIn]]:
    """The API and a worker, with a channel of each platform sending to the stand-in."""
    platform, url = stand_in
    with_channels = configured(settings, url)
    async with (
        worker_for(client, with_channels),
        api_client(create_app(with_channels, temporal=client)) as http,
    ):
        yield http, platform


async def post(http: httpx.AsyncClient, hook: Webhook) -> httpx.Response:
    # No key: the platform's signature is the request's authentication.
    return await http.post(hook.path, content=hook.body, headers={**hook.headers, "Authorization": ""})


async def sent_count(platform: PlatformStandIn, count: int, within: float = 60) -> None:
    try:
        async with asyncio.timeout(within):
            await platform.until(count)
    except TimeoutError:
        raise AssertionError(f"{len(platform.sent)} of {count} messages reached the platform") from None


async def transcript(http: httpx.AsyncClient) -> list[dict[str, Any]]:
    """The messages of the only conversation there is."""
    listed = (await http.get("/v1/conversations")).json()["items"]
    assert len(listed) == 1, listed
    messages: list[dict[str, Any]] = (
        await http.get(f"/v1/conversations/{listed[0]['conversation_id']}/messages")
    ).json()["items"]
    return messages


PLATFORMS = ["slack", "telegram", "whatsapp", "twilio"]


def recipient(platform: str, chat: int) -> str:
    return {"slack": f"C{chat}", "telegram": str(chat), "whatsapp": f"1{chat}", "twilio": f"+1{chat}"}[
        platform
    ]


def sample(platform: str, text: str, chat: int, n: int = 1) -> Webhook:
    """Platform `platform`'s sample message number `n` of the test's chat."""
    if platform == "slack":
        return slack_message(
            text, ts=f"1700000000.00000{n}", thread_ts="1700000000.000001", channel=f"C{chat}"
        )
    if platform == "telegram":
        return telegram_message(text, message_id=1364 + n, chat_id=chat)
    if platform == "whatsapp":
        return whatsapp_message(
            text,
            message_id=f"wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA{n}",
            sender=f"1{chat}",
        )
    return twilio_message(text, sid=f"SM{n:032d}", webhook_base=PUBLIC, sender=f"+1{chat}")


@pytest.mark.parametrize("platform", PLATFORMS)
async def test_a_platforms_sample_message_is_answered_on_the_platform(
    channel_api: tuple[httpx.AsyncClient, PlatformStandIn], platform: str, chat: int
) -> None:
    http, stand_in = channel_api
    response = await post(http, sample(platform, QUESTION, chat))
    assert response.status_code == 200, response.text
    if platform == "twilio":  # TwiML that sends nothing: the reply goes through the Messages API
        assert response.headers["content-type"].startswith("text/xml") and b"<Response>" in response.content
    await sent_count(stand_in, 1)
    [message] = stand_in.sent
    assert (message.platform, message.to) == (platform, recipient(platform, chat))
    if platform == "slack":
        assert message.thread == "1700000000.000001"  # the thread is the conversation: the reply goes in it
    said = await transcript(http)
    assert [m["role"] for m in said] == ["user", "bot"] and said[0]["text"] == QUESTION
    assert message.said == said[1]["text"] and "express" in message.text.lower()


@pytest.mark.parametrize("platform", PLATFORMS)
async def test_a_request_not_signed_by_the_platform_is_refused(
    channel_api: tuple[httpx.AsyncClient, PlatformStandIn], platform: str, chat: int
) -> None:
    http, stand_in = channel_api
    forged = {
        "slack": slack_message(QUESTION, ts="1700000000.000009", secret="not-the-secret"),
        "telegram": telegram_message(QUESTION, message_id=9, secret="not-the-secret"),
        "whatsapp": whatsapp_message(QUESTION, message_id="wamid.forged", secret="not-the-secret"),
        "twilio": twilio_message(QUESTION, sid="SM9", webhook_base=PUBLIC, token="not-the-token"),
    }[platform]
    refused = await post(http, forged)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_signature"
    if platform != "telegram":  # a body changed after signing (Telegram sends a secret, signs no body)
        genuine = sample(platform, QUESTION, chat)
        tampered = genuine.body.replace(b"express", b"EXPRESS")
        assert tampered != genuine.body
        assert (await post(http, Webhook(genuine.path, genuine.headers, tampered))).status_code == 401
    if platform == "slack":  # signed well, but replayed later than Slack's five minutes
        stale = slack_message(QUESTION, ts="1700000000.000008", at=time.time() - 6 * 60)
        assert (await post(http, stale)).status_code == 401
    await asyncio.sleep(1)
    assert stand_in.sent == [] and (await http.get("/v1/conversations")).json()["items"] == []


async def test_a_platform_sending_a_message_again_makes_one_turn(
    channel_api: tuple[httpx.AsyncClient, PlatformStandIn], chat: int
) -> None:
    """The platform's first request and three retries of it (not acknowledged in time, say), two at once."""
    http, stand_in = channel_api
    hook = sample("telegram", QUESTION, chat)
    first = await asyncio.gather(post(http, hook), post(http, hook))
    later = [await post(http, hook) for _ in range(2)]
    assert [r.status_code for r in [*first, *later]] == [200] * 4
    await sent_count(stand_in, 1)
    await asyncio.sleep(2)  # a second turn would have been answered by now
    assert len(stand_in.sent) == 1
    assert [m["role"] for m in await transcript(http)] == ["user", "bot"]


async def test_replies_reach_the_platform_in_the_order_of_the_messages(
    channel_api: tuple[httpx.AsyncClient, PlatformStandIn], chat: int
) -> None:
    http, stand_in = channel_api
    texts = ["hello", QUESTION, "can I pay with PayPal?", "how do I return an item?"]
    for n, text in enumerate(texts, start=1):  # each acknowledged once taken, before it is answered
        assert (await post(http, sample("whatsapp", text, chat, n))).status_code == 200
    await sent_count(stand_in, len(texts))
    said = await transcript(http)
    assert [m["text"] for m in said if m["role"] == "user"] == texts
    assert [m.said for m in stand_in.sent] == [m["text"] for m in said if m["role"] == "bot"]


async def test_the_platforms_handshakes(channel_api: tuple[httpx.AsyncClient, PlatformStandIn]) -> None:
    http, _ = channel_api
    challenge = slack_signed(
        b'{"token": "t", "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P", "type": "url_verification"}'
    )
    answered = await post(http, challenge)
    assert answered.json() == {"challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"}
    query = {"hub.mode": "subscribe", "hub.challenge": "1158201444", "hub.verify_token": WHATSAPP_VERIFY}
    subscribed = await http.get("/v1/channels/shop-whatsapp", params=query, headers={"Authorization": ""})
    assert subscribed.status_code == 200 and subscribed.text == "1158201444"
    wrong = await http.get(
        "/v1/channels/shop-whatsapp",
        params=query | {"hub.verify_token": "guess"},
        headers={"Authorization": ""},
    )
    assert wrong.status_code == 401
    unknown = await post(http, Webhook("/v1/channels/nobody", {}, b"{}"))
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "channel_not_found"


async def test_a_platform_down_gets_the_reply_later_and_one_refusing_it_leaves_a_dead_letter(
    channel_api: tuple[httpx.AsyncClient, PlatformStandIn], chat: int
) -> None:
    http, stand_in = channel_api
    stand_in.down = 3  # three attempts get 503: the fourth, about 7 s later, is taken
    assert (await post(http, sample("slack", QUESTION, chat, 1))).status_code == 200
    await sent_count(stand_in, 1, within=60)
    assert stand_in.requests == 4
    stand_in.refusing = True  # the app's token revoked: refused for good, not retried
    assert (await post(http, sample("slack", "can I pay with PayPal?", chat, 2))).status_code == 200
    for _ in range(300):
        dead = (await http.get("/v1/deliveries", params={"status": "dead"})).json()
        if dead:
            break
        await asyncio.sleep(0.1)
    [letter] = dead
    assert (
        letter["attempts"] == 1 and "account_inactive" in letter["last_error"] and "PayPal" in letter["text"]
    )
    # The conversation goes on meanwhile; once the token is fixed, the admin resends the dead letter.
    stand_in.refusing = False
    resent = await http.post(f"/v1/deliveries/{letter['id']}/resend")
    assert resent.status_code == 202
    await sent_count(stand_in, 2)
    assert "PayPal" in stand_in.sent[1].text or "pay" in stand_in.sent[1].text.lower()
    for _ in range(100):
        statuses = {d["id"]: d["status"] for d in (await http.get("/v1/deliveries")).json()}
        if statuses[letter["id"]] == "sent":
            break
        await asyncio.sleep(0.1)
    assert set(statuses.values()) == {"sent"}
    again = await http.post(f"/v1/deliveries/{letter['id']}/resend")
    assert again.status_code == 409 and again.json()["error"]["code"] == "delivery_not_dead"


async def test_a_delivery_run_again_after_the_platform_took_it_sends_nothing(
    settings: Settings, stand_in: tuple[PlatformStandIn, str]
) -> None:
    """The attempt whose result never reached Temporal (its worker died after the send) runs again: the
    ledger says it was sent."""
    platform, url = stand_in
    engine = get_engine(settings.resolved_database_url)
    activities = DeliveryActivities(engine, configured(settings, url).channels)
    delivery = Delivery(
        id="default/c1/t1",
        conversation_id="default/c1",
        address=ChannelAddress(channel="shop-telegram", platform="telegram", to="42"),
        text="Express shipping costs 9.90.",
    )
    first = await ActivityEnvironment().run(activities.deliver, delivery)
    again = await ActivityEnvironment().run(activities.deliver, delivery)
    assert first.status == again.status == "sent" and first.platform_id == again.platform_id
    assert len(platform.sent) == 1 and platform.requests == 1
    row = ledger.get(engine, delivery.id)
    assert row is not None and row.status == "sent" and row.attempts == 1


async def test_a_worker_killed_while_the_platform_is_down_delivers_once_through_another(
    client: Client, settings: Settings, stand_in: tuple[PlatformStandIn, str], tmp_path: Path, chat: int
) -> None:
    """The worker delivering a reply dies (SIGKILL, and stays dead) while the platform is down; another
    worker takes the delivery over once the first one's attempt times out, and the platform gets it once."""
    platform, url = stand_in
    with_channels = configured(settings, url).model_copy(update={"worker_metrics_port": 0})
    platform.down = 10_000
    first = WorkerProcess(with_channels, tmp_path / "worker-1.log")
    await first.start()
    async with api_client(create_app(with_channels, temporal=client)) as http:
        try:
            assert (await post(http, sample("telegram", QUESTION, chat))).status_code == 200
            deadline = time.monotonic() + 60
            while platform.requests < 2:  # the reply is made, and its delivery is failing
                assert time.monotonic() < deadline, "no delivery was attempted"
                await asyncio.sleep(0.1)
            await first.kill()
            platform.down = 0
            second = WorkerProcess(with_channels, tmp_path / "worker-2.log")
            await second.start()
            try:
                await sent_count(platform, 1, within=90)
                await asyncio.sleep(3)
                assert len(platform.sent) == 1
                said = await transcript(http)
                assert platform.sent[0].said == said[-1]["text"]
            finally:
                await second.stop()
        finally:
            await first.kill()


async def test_the_integrators_webhook_gets_every_message_signed_once(
    channel_api: tuple[httpx.AsyncClient, PlatformStandIn],
) -> None:
    """A conversation started over the API naming the tenant's webhook channel: its reply, a person's
    message and a reminder are POSTed there, each signed and once; one the receiver refuses for good is a
    dead letter."""
    http, stand_in = channel_api
    hooks = stand_in.integrator
    conversation_id = f"hooked-{random.randrange(10**9)}"
    url = f"/v1/conversations/{conversation_id}"
    created = await http.post("/v1/conversations", json={"id": conversation_id, "channel": "shop-hooks"})
    assert created.status_code == 201, created.text
    queued = await http.post(f"{url}/turns", json={"text": QUESTION, "wait": False})
    assert queued.status_code == 202  # the integrator takes the reply from its webhook, not this request
    await http.post(f"{url}/handoff", json={"agent": "ada", "reason": "a person checks"})
    await http.post(f"{url}/agent-messages", json={"text": "Ada here: it ships today.", "agent": "ada"})
    await http.post(f"{url}/reminders", json={"text": "Your parcel is on its way.", "in_seconds": 5})
    deadline = time.monotonic() + 60
    while len(hooks.received) < 3:
        assert time.monotonic() < deadline, hooks.received
        await asyncio.sleep(0.1)
    said = await transcript(http)
    reply = next(m["text"] for m in said if m["role"] == "bot")
    assert [m["text"] for m in hooks.received.values()] == [
        reply,
        "Ada here: it ships today.",
        "Your parcel is on its way.",
    ]
    assert {m["conversation_id"] for m in hooks.received.values()} == {conversation_id}
    assert hooks.forged == 0 and hooks.copies == 0
    hooks.refusing = True  # 410: the integrator's endpoint is gone
    await http.post(f"{url}/agent-messages", json={"text": "Anything else?", "agent": "ada"})
    for _ in range(300):
        dead = (await http.get("/v1/deliveries", params={"status": "dead"})).json()
        if dead:
            break
        await asyncio.sleep(0.1)
    assert [d["text"] for d in dead] == ["Anything else?"] and "410" in dead[0]["last_error"]


async def test_a_webhook_channel_is_the_tenants_and_the_servers_to_name(
    channel_api: tuple[httpx.AsyncClient, PlatformStandIn],
) -> None:
    http, _ = channel_api
    unknown = await http.post("/v1/conversations", json={"channel": "no-such-hooks"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "channel_not_found"
    platform = await http.post("/v1/conversations", json={"channel": "shop-telegram"})  # not a webhook
    assert platform.status_code == 404
    others = await http.post("/v1/conversations", json={"channel": "acme-hooks"})  # another tenant's
    assert others.status_code == 404 and others.json()["error"]["code"] == "channel_not_found"
    token = (await http.post("/v1/end-user-tokens", json={"user": "someone"})).json()["token"]
    as_user = await http.post(
        "/v1/conversations", json={"channel": "shop-hooks"}, headers={"Authorization": f"Bearer {token}"}
    )
    assert as_user.status_code == 403
    # It takes no messages of its own: the integrator sends turns over the API.
    posted = await post(http, Webhook("/v1/channels/shop-hooks", {}, b"{}"))
    assert posted.status_code == 404 and posted.json()["error"]["code"] == "channel_not_found"
