"""Numbers per bot version, and the canary guard: every answered turn is counted for the version that made
it (from the store, the same for every API replica), ratings and the users' 1 to 5 scores beside them; a
canary that degrades or is rated down more than its stable version is rolled back by the guard, which
says so in the log, the audit log and a metric."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY
from temporalio.client import Client
from temporalio.worker import Worker

from api.app import create_app
from dialogue.platform import canary_guard, releases
from dialogue.platform.bot_versions import BotRef
from dialogue.platform.db import get_engine
from dialogue.platform.settings import Settings
from dialogue.platform.version_numbers import percentile, version_numbers
from dialogue.security.identity import create_key
from tests.conftest import api_client
from tests.test_bot_releases import BOT, V2_GREETING, demo_copy, greet, published

BROKEN_GREETING = "Hello {name}, welcome to Northwind!"
"""A template naming a placeholder no turn fills: every greeting of this version is a degraded turn."""


@pytest.fixture
def fast(settings: Settings) -> Settings:
    return settings.model_copy(update={"release_cache_seconds": 0.5, "canary_guard_seconds": 0})


@pytest.fixture
async def api(client: Client, fast: Settings, worker: Worker) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(create_app(fast, temporal=client)) as http:
        yield http


async def canary_beside_stable(
    api: httpx.AsyncClient, settings: Settings, tmp_path: Path, greeting: str
) -> tuple[BotRef, BotRef]:
    stable = (await published(settings, demo_copy(tmp_path, "stable"))).ref
    canary = (await published(settings, demo_copy(tmp_path, "canary", greeting=greeting))).ref
    assert (await api.post(f"/v1/bots/{BOT}/release", json={"version": stable.version})).status_code == 200
    made = await api.post(f"/v1/bots/{BOT}/release", json={"version": canary.version, "percent": 50})
    assert made.status_code == 200, made.text
    return stable, canary


def conversations_on(settings: Settings, version: str, count: int, run: str) -> list[str]:
    """Ids of new conversations the bot's release gives `version`."""
    release = releases.get_release(get_engine(settings.resolved_database_url), BOT)
    assert release is not None
    chosen = (
        f"{run}-{n}" for n in range(10_000) if releases.choose(release, f"default/{run}-{n}") == version
    )
    return [next(chosen) for _ in range(count)]


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize("store_url", ["sqlite", "postgresql"], indirect=True)
async def test_the_guard_rolls_back_a_canary_whose_template_is_broken(
    tmp_path: Path, fast: Settings, api: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    engine = get_engine(fast.resolved_database_url)
    stable, canary = await canary_beside_stable(api, fast, tmp_path, BROKEN_GREETING)
    run = uuid.uuid4().hex[:6]
    degraded_before = sample("dialogue_bot_turns_total", bot=BOT, version=canary.version, outcome="degraded")
    rollbacks_before = sample("dialogue_canary_rollbacks_total", bot=BOT, reason="degraded")
    for conversation in conversations_on(fast, canary.version, 4, f"c-{run}"):
        body = await greet(api, conversation)
        assert body["lineage"]["bot_version"] == canary.version and body["degraded"], body
    for conversation in conversations_on(fast, stable.version, 4, f"s-{run}"):
        body = await greet(api, conversation)
        assert body["lineage"]["bot_version"] == stable.version and not body["degraded"], body

    # The numbers, the canary beside the stable, over the canary's own period.
    shown = await api.get(f"/v1/bots/{BOT}/numbers")
    assert shown.status_code == 200, shown.text
    numbers = shown.json()
    assert numbers["canary"]["version"] == canary.version and numbers["stable"]["version"] == stable.version
    assert (numbers["canary"]["turns"], numbers["canary"]["degraded_rate"]) == (4, 1.0)
    assert (numbers["stable"]["turns"], numbers["stable"]["degraded_rate"]) == (4, 0.0)
    assert (
        numbers["stable"]["p50_ms"] is not None and numbers["stable"]["p99_ms"] >= numbers["stable"]["p50_ms"]
    )
    assert numbers["since"] is not None
    # And in this process's Prometheus counters.
    after = sample("dialogue_bot_turns_total", bot=BOT, version=canary.version, outcome="degraded")
    assert after - degraded_before == 4
    assert sample("dialogue_bot_turn_duration_seconds_count", bot=BOT, version=stable.version) >= 4

    later = conversations_on(fast, canary.version, 50, f"after-{run}")  # the canary's side, while it is one
    # Too few turns to judge: kept, whatever its numbers.
    verdict = canary_guard.guard(engine, BOT, margin=0.1, min_turns=5)
    assert verdict.outcome == "too_few_turns" and releases.get_release(engine, BOT).canary == canary.version  # type: ignore[union-attr]
    with caplog.at_level(logging.WARNING, logger="dialogue.platform.canary_guard"):
        verdict = canary_guard.guard(engine, BOT, margin=0.1, min_turns=4)
    assert verdict.outcome == "rolled_back" and verdict.canary is not None and verdict.canary.degraded == 4
    assert any("rolled back" in r.getMessage() and canary.version in r.getMessage() for r in caplog.records)
    release = releases.get_release(engine, BOT)
    assert release is not None and release.canary is None and release.stable == stable.version
    assert sample("dialogue_canary_rollbacks_total", bot=BOT, reason="degraded") - rollbacks_before == 1

    # Another replica's guard that judged the same canary finds it gone: no second rollback, no entry.
    assert releases.drop_canary(engine, BOT, canary.version, actor="guard", reason="again") is None
    assert canary_guard.guard(engine, BOT, margin=0.1, min_turns=4).outcome == "no_canary"
    history = (await api.get(f"/v1/bots/{BOT}")).json()["history"]
    assert [(e["action"], e["actor"]) for e in history[:2]] == [
        ("bot.rollback", "guard"),
        ("bot.release", "key:bootstrap"),  # the canary's release, by the operator's key
    ]
    entry = history[0]["detail"]
    assert entry["from"]["canary"] == canary.version and entry["to"]["stable"] == stable.version
    assert entry["reason"].startswith("degraded rate 100.0% over 4 turns of the canary")

    # New conversations on the canary's side get the stable version within the API's release period.
    rolled_back = time.monotonic()
    for conversation in later:
        body = await greet(api, conversation)
        if body["lineage"]["bot_version"] == stable.version:
            assert not body["degraded"]
            break
        assert time.monotonic() - rolled_back < 5, (
            "the guard's rollback did not reach new conversations in 5 s"
        )


async def test_the_apis_own_guard_rolls_back_a_canary_rated_down(
    tmp_path: Path, fast: Settings, client: Client, worker: Worker
) -> None:
    settings = fast.model_copy(
        update={"canary_guard_seconds": 0.2, "canary_guard_min_turns": 3, "canary_guard_margin": 0.5}
    )
    engine = get_engine(settings.resolved_database_url)
    async with api_client(create_app(settings, temporal=client)) as api:
        stable, canary = await canary_beside_stable(api, settings, tmp_path, V2_GREETING)
        run = uuid.uuid4().hex[:6]
        answered: list[tuple[str, str]] = []
        for conversation in conversations_on(settings, canary.version, 3, f"c-{run}"):
            body = await greet(api, conversation)
            assert body["reply"]["text"] == V2_GREETING and not body["degraded"]
            answered.append((conversation, body["turn_id"]))
        await asyncio.sleep(1)  # five rounds of the guard: a canary as good as the stable is kept
        assert releases.get_release(engine, BOT).canary == canary.version  # type: ignore[union-attr]
        for conversation, turn_id in answered:
            rated = await api.post(
                f"/v1/conversations/{conversation}/turns/{turn_id}/feedback", json={"rating": "down"}
            )
            assert rated.status_code == 201, rated.text
        deadline = time.monotonic() + 10
        while (release := releases.get_release(engine, BOT)) is not None and release.canary is not None:
            assert time.monotonic() < deadline, "the API's guard did not roll the canary back in 10 s"
            await asyncio.sleep(0.1)
        assert release is not None and release.stable == stable.version
        entry = (await api.get(f"/v1/bots/{BOT}")).json()["history"][0]
        # The guard may act once two of the three ratings are in (66.7% is past the margin already).
        reason = entry["detail"]["reason"]
        assert entry["actor"] == "guard" and re.match(r"rated-down rate (66\.7|100\.0)% over 3 turns", reason)
        # Only one replica's worth of rollbacks, however many rounds ran since.
        await asyncio.sleep(0.5)
        actors = [e["actor"] for e in (await api.get(f"/v1/bots/{BOT}")).json()["history"]]
        assert actors.count("guard") == 1


@pytest.mark.parametrize("store_url", ["sqlite", "postgresql"], indirect=True)
async def test_ratings_and_satisfaction_count_for_the_version_and_bad_scores_are_refused(
    tmp_path: Path, fast: Settings, api: httpx.AsyncClient
) -> None:
    engine = get_engine(fast.resolved_database_url)
    stable = (await published(fast, demo_copy(tmp_path, "stable"))).ref
    assert (await api.post(f"/v1/bots/{BOT}/release", json={"version": stable.version})).status_code == 200
    run = uuid.uuid4().hex[:6]
    first, second = f"sat-{run}-1", f"sat-{run}-2"
    turn = (await greet(api, first))["turn_id"]
    await greet(api, second)
    rated = await api.post(f"/v1/conversations/{first}/turns/{turn}/feedback", json={"rating": "down"})
    assert rated.status_code == 201

    scored = await api.post(f"/v1/conversations/{first}/satisfaction", json={"score": 5})
    assert scored.status_code == 201, scored.text
    assert (scored.json()["bot"], scored.json()["version"], scored.json()["score"]) == (
        BOT,
        stable.version,
        5,
    )
    again = await api.post(
        f"/v1/conversations/{first}/satisfaction", json={"score": 2, "comment": "call me on +44 20 7946 0958"}
    )
    assert again.status_code == 201 and again.json()["score"] == 2
    assert "7946" not in (again.json()["comment"] or "")  # redacted as a turn's text is
    assert (await api.post(f"/v1/conversations/{second}/satisfaction", json={"score": 4})).status_code == 201

    for bad in (0, 6, "5", 3.5, None):
        refused = await api.post(f"/v1/conversations/{first}/satisfaction", json={"score": bad})
        assert refused.status_code == 422, (bad, refused.text)
    missing = await api.post(f"/v1/conversations/nobody-{run}/satisfaction", json={"score": 3})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "conversation_not_found"
    other_tenant = create_key(engine, tenant="acme", scope="client")[1]
    theirs = await api.post(
        f"/v1/conversations/{first}/satisfaction",
        json={"score": 1},
        headers={"Authorization": f"Bearer {other_tenant}"},
    )
    assert theirs.status_code == 404  # another tenant's conversation is none of theirs

    shown = await api.get(f"/v1/bots/{BOT}/numbers")
    assert shown.status_code == 200
    numbers = shown.json()
    assert numbers["canary"] is None and numbers["since"] is None  # no canary: every recorded turn
    ours = numbers["stable"]
    assert ours["version"] == stable.version and ours["turns"] >= 2
    assert (ours["ratings"], ours["rated_down"]) == (1, 1)
    assert (ours["satisfaction_count"], ours["satisfaction_mean"]) == (2, 3.0)  # the replaced score is gone
    assert sample("dialogue_bot_ratings_total", bot=BOT, version=stable.version, rating="down") >= 1
    assert sample("dialogue_bot_satisfaction_count", bot=BOT, version=stable.version) >= 3

    admin_only = await api.get(f"/v1/bots/{BOT}/numbers", headers={"Authorization": f"Bearer {other_tenant}"})
    assert admin_only.status_code == 403
    assert (await api.get("/v1/bots/nobody/numbers")).status_code == 404

    # Erasing a conversation erases its score and what the numbers kept of it.
    assert (await api.delete(f"/v1/conversations/{first}")).status_code in (200, 204)
    left = version_numbers(engine, BOT, versions=[stable.version])[stable.version]
    assert (left.satisfaction_count, left.ratings) == (1, 0)


def test_percentiles_are_nearest_rank() -> None:
    values = [float(n) for n in range(1, 101)]
    assert (percentile(values, 0.5), percentile(values, 0.99)) == (50.0, 99.0)
    assert percentile([7.0], 0.99) == 7.0 and percentile([], 0.5) is None
