"""Buttons on the messaging platforms, against the real stack: a tool call waiting for the user's approval
reaches the platform with Approve and Deny under it, and a press (the platform's documented interaction
payload, signed) decides it, once however often the platform sends it; an offer to remember the user comes
with Yes and No, and a press is the user's answer. Replies list the articles they stand on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from temporalio.client import Client

from api import create_app
from dialogue.platform.settings import Settings
from tests.conftest import api_client, worker_for
from tests.fake_llm import FakeLlm, Plan
from tests.platforms import PlatformStandIn, Webhook, slack_press, telegram_press, whatsapp_press
from tests.test_agent import TOOLS, agent_bot, demo
from tests.test_channels import QUESTION, configured, post, sample, sent_count, transcript

ADDRESS_CHANGE = "please send order NW-105733 to Hauptstr. 1, Berlin"


@asynccontextmanager
async def on_channels(
    client: Client, settings: Settings, stand_in_url: str
) -> AsyncIterator[httpx.AsyncClient]:
    """The demo bot with a channel of each platform."""
    with_channels = configured(settings, stand_in_url)
    async with (
        worker_for(client, with_channels),
        api_client(create_app(with_channels, temporal=client)) as http,
    ):
        yield http


@asynccontextmanager
async def agent_on_channels(
    client: Client, settings: Settings, tmp_path: Path, llm_url: str, stand_in_url: str
) -> AsyncIterator[httpx.AsyncClient]:
    """The demo bot in agent mode (an LLM stand-in over HTTP) with a channel of each platform."""
    agent_settings = configured(settings, stand_in_url).model_copy(
        update={
            "generator": "openai",
            "llm_base_url": llm_url,
            "llm_model": "gpt-4o-mini",
            "bot_path": agent_bot(settings, tmp_path, tools=TOOLS),
        }
    )
    async with (
        worker_for(client, agent_settings),
        api_client(create_app(agent_settings, temporal=client)) as http,
    ):
        yield http


def press(platform: str, payload: str, title: str, chat: int, n: int) -> Webhook:
    """The test chat's user presses a button (their `n`th press) under the bot's message."""
    if platform == "slack":
        thread = "1700000000.000001"  # `sample`'s thread
        return slack_press(
            payload, title, channel=f"C{chat}", thread_ts=thread, action_ts=f"1700000099.00{n}"
        )
    if platform == "telegram":
        return telegram_press(payload, query_id=f"4382bfdwdsb323b2d{chat}{n}", chat_id=chat)
    return whatsapp_press(payload, title, message_id=f"wamid.press{chat}{n}", sender=f"1{chat}")


@pytest.mark.parametrize("platform", ["slack", "telegram", "whatsapp"])
async def test_an_approval_is_two_buttons_on_the_platform_and_a_press_decides_it_once(
    client: Client,
    settings: Settings,
    tmp_path: Path,
    model: tuple[FakeLlm, str],
    stand_in: tuple[PlatformStandIn, str],
    platform: str,
    chat: int,
) -> None:
    fake, llm_url = model
    platform_stand_in, url = stand_in
    fake.plans = [
        Plan(tool_calls=[("change_address", {"order_id": "NW-105733", "address": "Hauptstr. 1, Berlin"})]),
        Plan(text="Done: order NW-105733 now goes to Hauptstr. 1, Berlin."),
    ]
    async with agent_on_channels(client, settings, tmp_path, llm_url, url) as http:
        assert (await post(http, sample(platform, ADDRESS_CHANGE, chat))).status_code == 200
        await sent_count(platform_stand_in, 1)
        asked = platform_stand_in.sent[0]
        assert "change_address" in asked.text and "approv" in asked.text.lower()
        assert [title for title, _ in asked.buttons] == ["Approve", "Deny"]
        (_, approve), (_, deny) = asked.buttons
        assert approve.startswith("approve:") and deny == "deny:" + approve.removeprefix("approve:")
        assert demo.Shop(settings.data_dir).actions() == []

        pressed = press(platform, approve, "Approve", chat, 1)
        taken = await post(http, pressed)
        assert taken.status_code == 200, taken.text
        if platform == "telegram":  # the press answered in the webhook's response: its spinner stops
            assert taken.json()["method"] == "answerCallbackQuery"
        assert (await post(http, pressed)).status_code == 200  # the platform sends the press again
        await sent_count(platform_stand_in, 2)
        assert platform_stand_in.sent[1].text == "Done: order NW-105733 now goes to Hauptstr. 1, Berlin."
        assert platform_stand_in.sent[1].buttons == []
        # Another tap on Deny once decided: acknowledged (the platform would only resend it), nothing done.
        late = await post(http, press(platform, deny, "Deny", chat, 2))
        assert late.status_code == 200
        await asyncio.sleep(2)
        assert len(platform_stand_in.sent) == 2
        said = await transcript(http)
    assert [m["role"] for m in said] == ["user", "bot", "bot"]
    # Approved once: the call ran, and the model was asked to go on once.
    assert len(fake.requests) == 2
    told = [m for m in fake.requests[-1]["messages"] if m["role"] == "tool"][-1]["content"]
    assert "not approved" not in told
    if platform == "slack":  # a shared thread speaks for the tenant: every order is found, and changed
        assert len(demo.Shop(settings.data_dir).actions()) == 1
    else:  # a person's chat is theirs: the shop finds only their own orders, and this one is not
        assert "no order" in told


async def test_an_offer_to_remember_comes_with_yes_and_no_and_a_press_answers_it(
    client: Client,
    settings: Settings,
    stand_in: tuple[PlatformStandIn, str],
    chat: int,
) -> None:
    platform_stand_in, url = stand_in
    async with on_channels(client, settings, url) as http:
        assert (await post(http, sample("telegram", "Hi, my name is Anna", chat))).status_code == 200
        await sent_count(platform_stand_in, 1)
        offered = platform_stand_in.sent[0]
        assert "remember" in offered.text and offered.buttons == [("Yes", "say:yes"), ("No", "say:no")]
        taken = await post(http, press("telegram", "say:yes", "Yes", chat, 1))
        assert taken.status_code == 200 and taken.json()["method"] == "answerCallbackQuery"
        await sent_count(platform_stand_in, 2)
        said = await transcript(http)
    assert [m["text"] for m in said if m["role"] == "user"] == ["Hi, my name is Anna", "yes"]
    assert platform_stand_in.sent[1].text.startswith("Thank you: I'll remember")


async def test_a_reply_from_the_knowledge_base_names_its_articles_on_the_platform(
    client: Client,
    settings: Settings,
    stand_in: tuple[PlatformStandIn, str],
    chat: int,
) -> None:
    platform_stand_in, url = stand_in
    async with on_channels(client, settings, url) as http:
        assert (await post(http, sample("telegram", QUESTION, chat))).status_code == 200
        await sent_count(platform_stand_in, 1)
        said = await transcript(http)
    reply = said[-1]
    assert reply["sources"], reply
    answered = platform_stand_in.sent[0].text
    assert answered.startswith(reply["text"]) and "\n\nSources: " in answered
    assert reply["sources"][0]["title"] in answered.split("Sources: ")[1]
