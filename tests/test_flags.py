"""Feature flags: stable rollouts by conversation, their configuration, and each flag switched off end to end
(real Temporal, a real worker, the API over real HTTP, a stand-in LLM over HTTP)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from temporalio.client import Client

from api import create_app
from dialogue.brain.generation import build_generators
from dialogue.platform import events
from dialogue.platform.bot import BotDefinition, load_bot
from dialogue.platform.db import get_engine
from dialogue.platform.flags import FLAGS, FeatureFlags, bucket, deployment_flags
from dialogue.platform.settings import Settings
from tests.conftest import api_client, bot_with, served_llm
from tests.fake_llm import FakeLlm, Plan
from worker import build_worker

KEYS = [f"default/conversation-{i}" for i in range(2000)]
LLM_TEXT = "Express shipping costs 12.90 euros [1]."
EMAIL = "jane.doe@example.com"
SSE = {"Accept": "text/event-stream"}


@asynccontextmanager
async def deployment(client: Client, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A worker and the API, both with these settings, for the length of the block."""
    with ThreadPoolExecutor(4) as executor:
        async with (
            build_worker(client, settings, executor=executor),
            api_client(create_app(settings, temporal=client)) as http,
        ):
            yield http


def conversations(flags: FeatureFlags, *, on: bool, count: int) -> list[str]:
    """Fresh conversation ids whose `llm_generator` flag is `on`."""
    found: list[str] = []
    while len(found) < count:
        candidate = f"fl-{uuid.uuid4().hex[:8]}"
        if flags.enabled("llm_generator", f"default/{candidate}") is on:
            found.append(candidate)
    return found


def test_a_conversation_keeps_its_bucket_in_every_process() -> None:
    # A constant, not a second call: Python's own hash() would change between processes.
    assert bucket("llm_generator", "default/demo-1") == 2612
    assert bucket("handoff", "default/demo-1") != bucket("llm_generator", "default/demo-1")


@pytest.mark.parametrize("percent", [1, 10, 33.3, 50, 90])
def test_a_rollout_turns_the_flag_on_for_its_share_of_conversations(percent: float) -> None:
    flags = FeatureFlags.resolve({"llm_generator": percent})
    share = sum(flags.enabled("llm_generator", key) for key in KEYS) / len(KEYS)
    assert abs(share - percent / 100) < 0.02, share
    assert all(flags.enabled("llm_generator", key) == flags.evaluate(key)["llm_generator"] for key in KEYS)


def test_raising_a_rollout_only_adds_conversations() -> None:
    ten, twenty = (FeatureFlags.resolve({"llm_generator": p}) for p in (10, 20))
    first = {key for key in KEYS if ten.enabled("llm_generator", key)}
    second = {key for key in KEYS if twenty.enabled("llm_generator", key)}
    assert first < second


def test_true_false_0_and_100_are_everyone_or_no_one() -> None:
    flags = FeatureFlags.resolve({"streaming": False, "redaction": 100, "handoff": 0, "llm_generator": True})
    values = [flags.evaluate(key) for key in KEYS[:200]]
    assert all(
        v
        == {
            "streaming": False,
            "llm_generator": True,
            "redaction": True,
            "handoff": False,
            "llm_variant": False,
            "agent": False,
        }
        for v in values
    )


def test_unset_flags_keep_the_behaviour_from_before_flags() -> None:
    grounded, openai = (FeatureFlags.resolve({}, generator=g) for g in ("grounded", "openai"))
    # Unset, the LLM flag is not sent at all: each worker's DIALOGUE_GENERATOR decides, as before.
    # The LLM variant and the agent mode are off unless a rollout puts conversations on them.
    everything_else = {f: f not in ("llm_variant", "agent") for f in FLAGS if f != "llm_generator"}
    assert grounded.evaluate("default/x") == openai.evaluate("default/x") == everything_else
    assert not grounded.may_be_on("llm_generator") and openai.may_be_on("llm_generator")


def test_a_bots_flags_override_the_deployments(tmp_path: Path) -> None:
    settings = Settings(flags={"handoff": False, "llm_generator": 10})
    bot = load_bot(bot_with(settings, tmp_path, flags={"handoff": True, "redaction": "off"}))
    assert deployment_flags(settings, bot).percent == {
        "streaming": 100,
        "llm_generator": 10,
        "redaction": 0,
        "handoff": 100,
        "llm_variant": 0,
        "agent": 0,
    }


def test_an_unknown_flag_or_a_share_past_100_is_a_configuration_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DIALOGUE_FLAGS", '{"llm_generator": 10, "handoff": false}')
    assert Settings().flags == {"llm_generator": 10, "handoff": False}
    monkeypatch.setenv("DIALOGUE_FLAGS", '{"llm_generater": 10}')
    with pytest.raises(ValidationError, match="llm_generater"):
        Settings()
    monkeypatch.delenv("DIALOGUE_FLAGS")
    with pytest.raises(ValidationError, match="less than or equal to 100"):
        Settings(flags={"streaming": 150})
    with pytest.raises(
        ValidationError,
        match="'streaming', 'llm_generator', 'redaction', 'handoff', 'llm_variant' or 'agent'",
    ):
        load_bot(bot_with(Settings(), tmp_path, flags={"streeming": True}))


@pytest.mark.parametrize(
    ("generator", "flags", "configured", "llm"),
    [
        ("grounded", {}, "grounded", None),
        ("grounded", {"llm_generator": 5}, "grounded", "openai:m"),
        ("openai", {}, "openai:m", "openai:m"),
        ("openai", {"llm_generator": False}, "openai:m", "openai:m"),
    ],
)
def test_a_worker_has_the_llm_generator_when_the_flag_may_turn_it_on(
    demo_bot: BotDefinition, generator: str, flags: dict[str, Any], configured: str, llm: str | None
) -> None:
    generators = build_generators(Settings(generator=generator, flags=flags, llm_model="m"), demo_bot)
    assert generators.configured.name == configured
    assert generators.grounded.name == "grounded" and generators.choose(False).name == "grounded"
    assert (generators.llm.name if generators.llm else None) == llm
    assert generators.choose(None).name == configured  # a turn from before flags
    assert generators.choose(True).name == (llm or configured)  # no LLM here: the configured one answers


async def test_a_rollout_answers_each_conversation_with_the_generator_of_its_side(
    client: Client, settings: Settings
) -> None:
    fake = FakeLlm(plans=[Plan(text=LLM_TEXT)])
    async with served_llm(fake) as url:
        # The deployment's generator stays grounded: the flag alone brings the LLM to half the conversations.
        rollout = settings.model_copy(
            update={"flags": {"llm_generator": 50}, "llm_base_url": url, "llm_model": "trial"}
        )
        flags = FeatureFlags.resolve(rollout.flags)
        sides = {c: True for c in conversations(flags, on=True, count=2)} | {
            c: False for c in conversations(flags, on=False, count=2)
        }
        async with deployment(client, rollout) as http:
            for conversation, on in sides.items():
                for question in ("How much does express shipping cost?", "How do I return an item?"):
                    turn = await http.post(f"/v1/conversations/{conversation}/turns", json={"text": question})
                    assert turn.status_code == 200, turn.text
                    reply = turn.json()
                    lineage = (
                        await http.get(f"/v1/conversations/{conversation}/turns/{reply['turn_id']}/lineage")
                    ).json()["lineage"]
                    expected = "openai:trial" if on else "grounded"
                    assert (reply["reply"]["generator"], lineage["generator"]) == (expected, expected)
                    assert lineage["flags"]["llm_generator"] is on
                    assert (reply["reply"]["text"] == LLM_TEXT) is on
    assert len(fake.requests) == 2 * 2  # two turns of each conversation on the LLM's side


async def test_streaming_off_answers_a_stream_request_with_json_and_refuses_event_streams(
    client: Client, settings: Settings
) -> None:
    off = settings.model_copy(update={"flags": {"streaming": False}})
    conversation = f"fl-{uuid.uuid4().hex[:8]}"
    base = f"/v1/conversations/{conversation}"
    turn_id = f"turn-{uuid.uuid4().hex[:8]}"
    async with deployment(client, off) as http:
        answered = await http.post(
            f"{base}/turns",
            json={"text": "How much does express shipping cost?"},
            headers={**SSE, "Idempotency-Key": turn_id},
        )
        assert answered.status_code == 200, answered.text
        assert answered.headers["content-type"].startswith("application/json")
        reply = answered.json()
        assert reply["reply"]["text"] and reply["lineage"]["flags"]["streaming"] is False
        for path in (f"{base}/turns/{turn_id}/events", f"{base}/events"):
            refused = await http.get(path, headers=SSE)
            assert refused.status_code == 409, path
            assert refused.json()["error"]["code"] == "feature_disabled"
            assert "streaming" in refused.json()["error"]["message"]
    # The worker wrote nothing for a stream: no token, NLU or sources event in the log.
    assert events.read(get_engine(off.resolved_database_url), f"default/{conversation}") == []


async def test_handoff_off_refuses_a_person_and_the_bot_keeps_a_user_who_asks_for_one(
    client: Client, settings: Settings, demo_bot: BotDefinition
) -> None:
    off = settings.model_copy(update={"flags": {"handoff": False}})
    base = f"/v1/conversations/fl-{uuid.uuid4().hex[:8]}"
    async with deployment(client, off) as http:
        assert (await http.post(f"{base}/turns", json={"text": "hello"})).status_code == 200
        for action, body in (
            ("handoff", {"agent": "ada"}),
            ("agent-messages", {"text": "hi"}),
            ("handback", {}),
        ):
            refused = await http.post(f"{base}/{action}", json=body)
            assert refused.status_code == 409, action
            assert refused.json()["error"]["code"] == "feature_disabled"

        asked = (await http.post(f"{base}/turns", json={"text": "I want to speak to a human agent"})).json()
        assert asked["nlu"]["intent"]["name"] == "human_agent"
        assert asked["held_by"] == "bot" and asked["reply"]["text"] in demo_bot.fallback_responses
        assert asked["lineage"]["flags"]["handoff"] is False
        state = (await http.get(base)).json()
        assert (state["held_by"], state["handoff"]) == ("bot", False)
        after = (
            await http.post(f"{base}/turns", json={"text": "How much does express shipping cost?"})
        ).json()
        assert after["held_by"] == "bot" and "12.90" in after["reply"]["text"]


async def test_a_conversation_a_person_holds_goes_back_to_the_bot_once_handoff_is_off(
    client: Client, settings: Settings
) -> None:
    off = settings.model_copy(update={"flags": {"handoff": False}})
    base = f"/v1/conversations/fl-{uuid.uuid4().hex[:8]}"
    with ThreadPoolExecutor(4) as executor:
        async with (
            build_worker(client, settings, executor=executor),
            api_client(create_app(settings, temporal=client)) as before,
            api_client(create_app(off, temporal=client)) as after,
        ):
            assert (await before.post(f"{base}/turns", json={"text": "hello"})).status_code == 200
            assert (await before.post(f"{base}/handoff", json={"agent": "ada"})).json()["held_by"] == "agent"
            answered = (await after.post(f"{base}/turns", json={"text": "hello?"})).json()
            assert answered["held_by"] == "bot" and answered["reply"]["text"]
            transcript = (await after.get(f"{base}/messages")).json()["items"]
    # The first turn, the handoff and the handback, then the turn the bot answered.
    assert [m["role"] for m in transcript] == ["user", "bot", "system", "system", "user", "bot"]


@pytest.mark.parametrize("redaction", [True, False], ids=["on-control", "off"])
async def test_redaction_off_keeps_personal_data_as_said_everywhere(
    client: Client, settings: Settings, tmp_path: Path, redaction: bool
) -> None:
    fake = FakeLlm(plans=[Plan(text=LLM_TEXT)])
    async with served_llm(fake) as url:
        # The bot's flag decides, whatever the deployment's says.
        configured = settings.model_copy(
            update={
                "bot_path": bot_with(settings, tmp_path, flags={"redaction": redaction}),
                "flags": {"redaction": not redaction},
                "generator": "openai",
                "llm_base_url": url,
                "llm_model": "m",
            }
        )
        base = f"/v1/conversations/fl-{uuid.uuid4().hex[:8]}"
        async with deployment(client, configured) as http:
            turn = await http.post(
                f"{base}/turns", json={"text": f"How much does express shipping cost? Reply to {EMAIL}"}
            )
            reply = turn.json()
            assert reply["reply"]["text"] == LLM_TEXT and reply["lineage"]["flags"]["redaction"] is redaction
            rated = await http.post(
                f"{base}/turns/{reply['turn_id']}/feedback", json={"rating": "up", "comment": f"mail {EMAIL}"}
            )
            assert rated.status_code == 201
            assert (
                await http.post(f"{base}/handoff", json={"reason": f"asked by {EMAIL}"})
            ).status_code == 200
            assert (
                await http.post(f"{base}/agent-messages", json={"text": f"I wrote to {EMAIL}"})
            ).status_code == 201
            transcript = json.dumps((await http.get(f"{base}/messages")).json()["items"])
    said = [reply["user_text"], rated.json()["comment"], transcript, json.dumps(fake.requests)]
    assert [EMAIL in text for text in said] == [not redaction] * 4
    assert transcript.count(EMAIL if not redaction else "[EMAIL]") == 3  # the turn, the reason, the message
