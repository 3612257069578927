"""Bots as versions: published from a folder, answered side by side by hash (stable and canary), released
and rolled back through the API and the store, a running conversation keeping its version unless a
release moves it, and every answer's lineage naming the bot and version that made it."""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy.engine import Engine
from temporalio.client import Client
from temporalio.worker import Worker

from api.app import create_app
from dialogue.apps.publishing import Published, PublishRefused, publish
from dialogue.platform import releases
from dialogue.platform.bot import load_bot
from dialogue.platform.bot_versions import (
    BotRef,
    bot_files,
    content_address,
    diff_versions,
    file_digests,
    folder_ref,
    get_version,
    require_version,
)
from dialogue.platform.db import get_engine
from dialogue.platform.settings import Settings
from dialogue.platform.temporal import workflow_id
from dialogue.security.identity import create_key
from tests.conftest import api_client

DEMO = Settings().bot_path.parent
BOT = load_bot(Settings().bot_path).name  # northwind-support
V2_GREETING = "Howdy from the second version! Northwind Gadgets support here."
CONCIERGE_GREETING = "Good day, the Northwind concierge speaking."


def demo_copy(tmp_path: Path, folder_name: str, **changes: Any) -> Path:
    """The demo bot's files in a folder of their own (its knowledge stays the deployment's), with changes
    to its bot.yaml: `greeting` replaces the greet intent's replies."""
    folder = tmp_path / folder_name
    shutil.copytree(DEMO, folder, ignore=shutil.ignore_patterns("knowledge", "__pycache__"))
    if not changes:
        return folder / "bot.yaml"  # byte for byte: the same version as the demo's own folder
    raw = yaml.safe_load((folder / "bot.yaml").read_text())
    greeting = changes.pop("greeting", None)
    if greeting is not None:
        for intent in raw["intents"]:
            if intent["name"] == "greet":
                intent["responses"] = [greeting]
    (folder / "bot.yaml").write_text(yaml.safe_dump(raw | changes, sort_keys=False))
    return folder / "bot.yaml"


async def published(settings: Settings, bot_path: Path, *, tests: bool = False) -> Published:
    # `publish` runs the conversation tests in an event loop of its own, as the CLI does: off this one.
    return await asyncio.to_thread(publish, settings, bot_path, actor="test", run_tests=tests)


@pytest.fixture
def fast_releases(settings: Settings) -> Settings:
    return settings.model_copy(update={"release_cache_seconds": 0.5})


@pytest.fixture
async def api(client: Client, fast_releases: Settings, worker: Worker) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(create_app(fast_releases, temporal=client)) as http:
        yield http


async def greet(http: httpx.AsyncClient, conversation: str, *, bot: str | None = None) -> dict[str, Any]:
    if bot is not None:
        created = await http.post("/v1/conversations", json={"id": conversation, "bot": bot})
        assert created.status_code == 201, created.text
    reply = await http.post(f"/v1/conversations/{conversation}/turns", json={"text": "hello there"})
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


def test_a_version_is_named_by_its_files_and_the_workers_own_folder_by_the_same_name(tmp_path: Path) -> None:
    copy = demo_copy(tmp_path, "same")
    assert folder_ref(copy) == folder_ref(Settings().bot_path)  # the bot's files, not the folder's others
    changed = demo_copy(tmp_path, "changed", greeting=V2_GREETING)
    assert folder_ref(changed).version != folder_ref(copy).version
    files = bot_files(copy, load_bot(copy))
    assert {"bot.yaml", "shop.py", "orders.json", "nlu/train.jsonl", "tests/intents.yaml"} <= set(files)
    assert not any(name.startswith("knowledge/") or name == "qa.jsonl" for name in files)
    assert content_address(file_digests(files)) == folder_ref(copy).version


def test_a_bot_naming_a_file_outside_its_folder_is_not_published(tmp_path: Path, settings: Settings) -> None:
    outside = tmp_path / "elsewhere.py"
    outside.write_text("")
    bot_path = demo_copy(tmp_path, "leaky", python_tools=str(outside))
    with pytest.raises(ValueError, match="outside the bot's folder"):
        publish(settings, bot_path, actor="test", run_tests=False)


@pytest.mark.parametrize("store_url", ["sqlite", "postgresql"], indirect=True)
async def test_publish_stores_an_immutable_version_once_and_diff_shows_the_change(
    tmp_path: Path, settings: Settings
) -> None:
    engine = get_engine(settings.resolved_database_url)
    first = await published(settings, demo_copy(tmp_path, "v1"))
    again = await published(settings, demo_copy(tmp_path, "v1-again"))
    assert first.stored and not again.stored and first.ref == again.ref
    second = await published(settings, demo_copy(tmp_path, "v2", greeting=V2_GREETING))
    assert second.ref.version != first.ref.version
    row = require_version(engine, BOT, second.ref.version, archive=True)
    assert row.manifest["nlu_model"] and row.manifest["knowledge_revision"] is not None
    assert row.manifest["tests"] == {"skipped": "--no-tests"}
    assert get_version(engine, BOT, second.ref.version[:6]) is not None  # a prefix names it
    changes = diff_versions(require_version(engine, BOT, first.ref.version, archive=True), row)
    assert changes["changed"] == ["bot.yaml"] and not changes["added"] and not changes["removed"]
    assert f"+  - {V2_GREETING}" in changes["diffs"]["bot.yaml"]


async def test_a_version_whose_conversation_tests_fail_is_refused_and_not_stored(
    tmp_path: Path, settings: Settings
) -> None:
    bot_path = demo_copy(tmp_path, "broken", greeting="Go away.")
    tests = bot_path.parent / "tests"
    shutil.rmtree(tests)
    tests.mkdir()
    (tests / "greeting.yaml").write_text(
        yaml.safe_dump(
            {
                "tests": [
                    {
                        "name": "a greeting is answered with a greeting",
                        "steps": [{"user": "hello there", "expect": {"contains": "Northwind"}}],
                    }
                ]
            }
        )
    )
    with pytest.raises(PublishRefused, match="conversation tests: 1 failed"):
        await published(settings, bot_path, tests=True)
    engine = get_engine(settings.resolved_database_url)
    assert get_version(engine, BOT, folder_ref(bot_path).version) is None


@pytest.mark.parametrize("store_url", ["sqlite", "postgresql"], indirect=True)
async def test_stable_and_canary_answer_side_by_side_by_hash_and_a_rollback_reaches_new_conversations(
    tmp_path: Path, fast_releases: Settings, client: Client, api: httpx.AsyncClient
) -> None:
    settings = fast_releases
    engine = get_engine(settings.resolved_database_url)
    v1 = (await published(settings, demo_copy(tmp_path, "v1"))).ref
    v2 = (await published(settings, demo_copy(tmp_path, "v2", greeting=V2_GREETING))).ref
    assert v1 == folder_ref(settings.bot_path)  # the worker's own bot: served without loading it

    made = await api.post(f"/v1/bots/{BOT}/release", json={"version": v1.version})
    assert made.status_code == 200, made.text
    made = await api.post(f"/v1/bots/{BOT}/release", json={"version": v2.version, "percent": 50})
    assert made.json()["canary"] == v2.version and made.json()["canary_percent"] == 50
    release = releases.get_release(engine, BOT)
    assert release is not None

    run = uuid.uuid4().hex[:6]
    seen: dict[str, str] = {}
    for n in range(16):
        conversation = f"side-{run}-{n}"
        body = await greet(api, conversation)
        expected = releases.choose(release, f"default/{conversation}")
        lineage = body["lineage"]
        assert (lineage["bot"], lineage["bot_version"]) == (BOT, expected)
        assert (body["reply"]["text"] == V2_GREETING) == (expected == v2.version)
        seen[conversation] = expected
    assert set(seen.values()) == {v1.version, v2.version}  # 16 conversations: both sides (p of not: 2^-15)

    # The state the Web UI and the API show names the version too.
    on_canary = next(c for c, v in seen.items() if v == v2.version)
    state = await api.get(f"/v1/conversations/{on_canary}")
    assert state.json()["bot_version"] == v2.version
    details = await client.get_workflow_handle(workflow_id(f"default/{on_canary}")).query(
        "__temporal_workflow_metadata"
    )
    assert f"bot `{BOT}@{v2.version}`" in details.current_details

    # A rollback made in the store (as `dialogue bot rollback` does) reaches new conversations within the
    # API's period (0.5 s here; 2 s by default); the running canary conversation keeps its version.
    releases.rollback(engine, BOT, actor="test", reason="the greeting is off")
    rolled_back = time.monotonic()
    canary_side = (
        f"after-{run}-{n}"
        for n in range(10_000)
        if releases.choose(release, f"default/after-{run}-{n}") == v2.version
    )
    while True:
        body = await greet(api, next(canary_side))
        if body["lineage"]["bot_version"] == v1.version:
            break
        assert time.monotonic() - rolled_back < 5, "a rollback did not reach new conversations in 5 s"
    body = await greet(api, on_canary)
    assert body["lineage"]["bot_version"] == v2.version and body["reply"]["text"] == V2_GREETING

    # A release that moves running conversations moves it at its next turn.
    moved = await api.post(
        f"/v1/bots/{BOT}/release", json={"version": v1.version, "move_running": True, "reason": "urgent fix"}
    )
    assert moved.status_code == 200 and moved.json()["move_running"] is True
    body = await greet(api, on_canary)
    assert body["lineage"]["bot_version"] == v1.version and body["reply"]["text"] != V2_GREETING

    # Audited: who, when, from what to what, newest first.
    response = await api.get(f"/v1/bots/{BOT}")
    assert response.status_code == 200, response.text
    shown = response.json()
    actions = [(e["action"], e["detail"]["to"]["canary"]) for e in shown["history"]]
    assert actions == [
        ("bot.release", None),
        ("bot.rollback", None),
        ("bot.release", v2.version),
        ("bot.release", None),
    ]
    assert shown["history"][1]["actor"] == "test"
    assert shown["history"][1]["detail"]["from"]["canary"] == v2.version
    assert shown["history"][0]["detail"]["reason"] == "urgent fix"


async def test_a_conversation_names_its_bot_and_unknown_bots_are_refused(
    tmp_path: Path, fast_releases: Settings, api: httpx.AsyncClient
) -> None:
    concierge = (
        await published(
            fast_releases, demo_copy(tmp_path, "concierge", name="concierge", greeting=CONCIERGE_GREETING)
        )
    ).ref
    refused = await api.post("/v1/conversations", json={"bot": "concierge"})
    assert refused.status_code == 404 and refused.json()["error"]["code"] == "bot_not_found"
    assert (
        await api.post("/v1/bots/concierge/release", json={"version": concierge.version})
    ).status_code == 200
    run = uuid.uuid4().hex[:6]
    body = await greet(api, f"named-{run}", bot="concierge")
    assert body["reply"]["text"] == CONCIERGE_GREETING
    assert (body["lineage"]["bot"], body["lineage"]["bot_version"]) == ("concierge", concierge.version)
    default = await greet(api, f"default-{run}")  # no bot named: the deployment's, from its files
    assert (default["lineage"]["bot"], default["lineage"]["bot_version"]) == (
        BOT,
        folder_ref(fast_releases.bot_path).version,
    )


async def test_admins_read_bots_only_the_operator_releases_and_bad_requests_are_4xx(
    tmp_path: Path, fast_releases: Settings, engine_for: Engine, api: httpx.AsyncClient
) -> None:
    v1 = (await published(fast_releases, demo_copy(tmp_path, "v1"))).ref
    v2 = (await published(fast_releases, demo_copy(tmp_path, "v2", greeting=V2_GREETING))).ref
    admin = create_key(engine_for, tenant="acme", scope="admin")[1]
    headers = {"Authorization": f"Bearer {admin}"}
    listed = await api.get("/v1/bots", headers=headers)
    assert listed.status_code == 200
    versions = {v["version"] for v in listed.json()[0]["versions"]}
    assert {v1.version, v2.version} <= versions
    diff = await api.get(
        f"/v1/bots/{BOT}/diff", params={"from": v1.version, "to": v2.version}, headers=headers
    )
    assert diff.status_code == 200 and diff.json()["changed"] == ["bot.yaml"]
    shown = await api.get(f"/v1/bots/{BOT}/versions/{v2.version[:8]}", headers=headers)
    assert shown.status_code == 200 and shown.json()["version"] == v2.version
    refused = await api.post(f"/v1/bots/{BOT}/release", json={"version": v1.version}, headers=headers)
    assert refused.status_code == 403
    assert (await api.post(f"/v1/bots/{BOT}/release", json={"version": "0" * 12})).status_code == 404
    canary_first = await api.post(f"/v1/bots/{BOT}/release", json={"version": v2.version, "percent": 10})
    assert canary_first.status_code == 409 and canary_first.json()["error"]["code"] == "invalid_release"
    assert (await api.post(f"/v1/bots/{BOT}/rollback", json={})).status_code == 404
    assert (await api.post(f"/v1/bots/{BOT}/release", json={"version": "not-hex"})).status_code == 422
    assert (await api.get("/v1/bots/nobody")).status_code == 404


@pytest.fixture
def engine_for(fast_releases: Settings) -> Engine:
    return get_engine(fast_releases.resolved_database_url)


def test_choose_keeps_a_conversation_on_its_side_as_the_canary_grows() -> None:
    from datetime import UTC, datetime

    from dialogue.platform.db import BotRelease

    def at(percent: float) -> BotRelease:
        return BotRelease(
            bot="demo",
            stable="a",
            canary="b",
            canary_percent=percent,
            updated_at=datetime.now(UTC),
            updated_by="t",
        )

    keys = [f"default/c{n}" for n in range(2000)]
    on = {p: {k for k in keys if releases.choose(at(p), k) == "b"} for p in (10, 50, 100)}
    assert on[10] <= on[50] <= on[100] and len(on[100]) == 2000
    assert 100 < len(on[10]) < 300 and 850 < len(on[50]) < 1150
    assert BotRef.parse("demo@abc") == BotRef("demo", "abc")


async def test_review_annotate_publish_and_an_answer_leads_to_the_model_card_and_its_data(
    tmp_path: Path, fast_releases: Settings, api: httpx.AsyncClient
) -> None:
    """The learning loop end to end: turns the NLU placed out of scope are exported, a person labels them,
    the next version learns them, and an answer of that version leads to its card, which names the data
    and the conversations it learned from."""
    from dialogue.apps.learning.review import export_review
    from dialogue.brain.nlu.annotations import read_annotations, write_annotations

    engine = get_engine(fast_releases.resolved_database_url)
    run = uuid.uuid4().hex[:6]
    asked = {
        f"learn-{run}-0": "my gizmo arrived with a cracked screen, what now",
        f"learn-{run}-1": "do you sell refurbished phones",
    }
    for conversation, text in asked.items():
        reply = await api.post(f"/v1/conversations/{conversation}/turns", json={"text": text})
        assert reply.status_code == 200, reply.text
    exported = tmp_path / "review.jsonl"
    await asyncio.to_thread(
        export_review, engine, load_bot(fast_releases.bot_path), exported, unsure_below=1.0
    )
    lines = [line for _, line in read_annotations(exported)]
    ours = [line for line in lines if line.conversation_id.split("/", 1)[1] in asked]
    assert len(ours) == 2 and all(line.label == "" for line in ours)
    labelled = [line.model_copy(update={"label": "out_of_scope"}) for line in ours]

    bot_path = demo_copy(tmp_path, "learned", greeting=V2_GREETING)
    write_annotations(labelled, bot_path.parent / "nlu" / "reviewed.jsonl")
    raw = yaml.safe_load(bot_path.read_text())
    raw["nlu"]["reviewed"] = "nlu/reviewed.jsonl"
    bot_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    version = (await published(fast_releases, bot_path)).ref
    assert (await api.post(f"/v1/bots/{BOT}/release", json={"version": version.version})).status_code == 200

    body = await greet(api, f"after-learning-{run}")
    assert (body["lineage"]["bot"], body["lineage"]["bot_version"]) == (BOT, version.version)
    shown = await api.get(f"/v1/bots/{BOT}/versions/{body['lineage']['bot_version']}")
    assert shown.status_code == 200
    manifest = shown.json()["manifest"]
    assert "nlu/reviewed.jsonl" in manifest["files"]
    card = manifest["model_card"]
    assert sorted(card["reviewed_conversations"]) == sorted(f"default/{c}" for c in asked)
    assert card["examples_per_source"]["nlu/reviewed.jsonl"] == 2
    assert card["nlu_model"] == body["lineage"]["nlu_model"]  # the answer's model is the card's
    assert card["held_out"]["accuracy"] >= 0.8 and card["conversation_tests"] is not None
    assert "source" in manifest  # where it was published from: the operator's to see

    # Another tenant's admin reads the same version without the default tenant's conversations in it.
    admin = create_key(engine, tenant="acme", scope="admin")[1]
    seen = await api.get(
        f"/v1/bots/{BOT}/versions/{version.version}", headers={"Authorization": f"Bearer {admin}"}
    )
    assert seen.status_code == 200
    their = seen.json()["manifest"]
    assert "source" not in their
    assert their["model_card"]["reviewed_conversations"] == []
    assert their["model_card"]["reviewed_examples"] == []
    assert their["model_card"]["data_hash"] == card["data_hash"]


async def test_the_api_redacts_and_flags_a_conversation_by_the_version_it_gets(
    tmp_path: Path, fast_releases: Settings, api: httpx.AsyncClient
) -> None:
    """A canary that redacts one more kind of data, and keeps streaming off: its conversations' words are
    redacted before they reach the workflow, and their turns carry its flags; the stable's are not."""
    v1 = (await published(fast_releases, demo_copy(tmp_path, "v1"))).ref
    demo = load_bot(fast_releases.bot_path)
    privacy = demo.privacy.model_dump() | {
        "patterns": dict(demo.privacy.patterns) | {"VOUCHER": r"\bVC-\d{4}\b"}
    }
    v2 = (
        await published(
            fast_releases,
            demo_copy(tmp_path, "v2", privacy=privacy, flags={"streaming": False}),
        )
    ).ref
    assert (await api.post(f"/v1/bots/{BOT}/release", json={"version": v1.version})).status_code == 200
    made = await api.post(f"/v1/bots/{BOT}/release", json={"version": v2.version, "percent": 50})
    assert made.status_code == 200
    release = releases.get_release(get_engine(fast_releases.resolved_database_url), BOT)
    assert release is not None
    run = uuid.uuid4().hex[:6]
    sides: dict[str, str] = {}
    for n in range(40):
        conversation = f"policy-{run}-{n}"
        sides.setdefault(releases.choose(release, f"default/{conversation}"), conversation)
        if len(sides) == 2:
            break
    for version, conversation in sides.items():
        reply = await api.post(
            f"/v1/conversations/{conversation}/turns", json={"text": "my voucher VC-1234 does not work"}
        )
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["lineage"]["bot_version"] == version
        on_canary = version == v2.version
        assert ("[VOUCHER]" in body["user_text"]) == on_canary
        assert ("VC-1234" in body["user_text"]) != on_canary
        assert body["lineage"]["flags"]["streaming"] is (not on_canary)
