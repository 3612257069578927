"""`dialogue eval`: conversations recorded through the API and a worker are re-sent to a candidate bot on a
task queue of its own, and the report says, turn by turn, what would have changed: nothing for the same
bot, exactly the turns a changed template answers, the sources of the turns a removed document served;
the judge through a stand-in model; and the recorded side untouched."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlmodel import Session, func, select
from temporalio.client import Client
from typer.testing import CliRunner

from api import create_app
from dialogue.apps.cli import app
from dialogue.apps.evaluation.run import JudgeEndpoint, evaluate
from dialogue.apps.evaluation.source import Filters, read_export, recorded_conversations
from dialogue.platform.db import Message, get_engine
from dialogue.platform.settings import Settings
from tests.conftest import api_client, bot_with, served_llm, worker_for
from tests.fake_llm import FakeLlm, Plan

CONVERSATIONS = [
    ["hello", "how long does standard shipping take within Germany?", "thanks heaps"],
    ["good evening", "how many days do I have to return an item?", "where is my order NW-482913?"],
]


@pytest.fixture
async def recorded(client: Client, settings: Settings) -> AsyncIterator[tuple[Settings, list[str]]]:
    """The conversations above, recorded through the API; the second answer of the first rated down."""
    run = uuid.uuid4().hex[:6]
    ids = [f"recorded-{run}-{n}" for n in range(len(CONVERSATIONS))]
    async with worker_for(client, settings), api_client(create_app(settings, temporal=client)) as http:
        for conversation_id, texts in zip(ids, CONVERSATIONS, strict=True):
            for text in texts:
                response = await http.post(f"/v1/conversations/{conversation_id}/turns", json={"text": text})
                assert response.status_code == 200, response.text
                if text.startswith("how long"):
                    rated = await http.post(
                        f"/v1/conversations/{conversation_id}/turns/{response.json()['turn_id']}/feedback",
                        json={"rating": "down"},
                    )
                    assert rated.status_code == 201
        yield settings, ids


def conversations_of(settings: Settings, ids: list[str]) -> list[Any]:
    found = recorded_conversations(get_engine(settings.resolved_database_url), Filters(tenant="default"))
    return sorted((c for c in found if c.key.split("/", 1)[1] in ids), key=lambda c: c.key)


def rows(settings: Settings) -> int:
    with Session(get_engine(settings.resolved_database_url)) as session:
        return int(session.exec(select(func.count()).select_from(Message)).one())


async def test_the_same_bot_changes_nothing_and_the_recorded_side_is_untouched(
    client: Client, recorded: tuple[Settings, list[str]], tmp_path: Path
) -> None:
    settings, ids = recorded
    conversations = conversations_of(settings, ids)
    assert [len(c.turns) for c in conversations] == [3, 3]
    before_rows = rows(settings)
    histories = {
        i: len((await client.get_workflow_handle(f"conv-default/{i}").fetch_history()).events) for i in ids
    }
    result = await evaluate(
        settings, settings.bot_path, conversations, report=tmp_path / "same", conditions=[]
    )
    summary = result["summary"]
    assert (summary["turns"], summary["changed_turns"], summary["rated_down"]) == (6, 0, 1), summary
    assert summary["mean_similarity"] == 1.0 and summary["mean_source_overlap"] == 1.0
    assert result["sides"]["recorded"]["nlu_models"] == result["sides"]["candidate"]["nlu_models"]
    # Nothing of the recorded side changed: the store's transcript, the recorded workflows' histories.
    assert rows(settings) == before_rows
    for conversation_id, length in histories.items():
        history = await client.get_workflow_handle(f"conv-default/{conversation_id}").fetch_history()
        assert len(history.events) == length
    # The candidate's conversations ran as their own workflows, and ended.
    evaluated = [
        w async for w in client.list_workflows(f"WorkflowId STARTS_WITH 'conv-eval/{result['run_id']}'")
    ]
    assert len(evaluated) == 2 and all(
        w.status is not None and w.status.name == "COMPLETED" for w in evaluated
    )
    report = json.loads((tmp_path / "same" / "report.json").read_text())
    assert report["summary"]["turns"] == 6 and report["summary"]["changed_turns"] == 0
    assert report["turns"][0]["rating"] == "down"  # rated down first
    page = (tmp_path / "same" / "report.html").read_text()
    # Self-contained: no script, nothing loaded from elsewhere.
    assert page.count("<svg") == 3 and "<script" not in page and "src=" not in page and "href=" not in page


async def test_a_changed_template_changes_exactly_its_turns_and_fails_the_gate(
    recorded: tuple[Settings, list[str]], tmp_path: Path
) -> None:
    settings, ids = recorded
    intents = yaml.safe_load(settings.bot_path.read_text())["intents"]
    for intent in intents:
        if intent["name"] == "greet":
            intent["responses"] = ["Welcome to Northwind! What can I do for you?"]
    candidate = bot_with(settings, tmp_path, intents=intents)
    result = await evaluate(
        settings,
        candidate,
        conversations_of(settings, ids),
        report=tmp_path / "template",
        conditions=["changed_texts>10%", "changed_intents>0"],
    )
    report = json.loads((tmp_path / "template" / "report.json").read_text())
    changed = [(t["user_text"], t["changes"]) for t in report["turns"] if t["changes"]]
    assert sorted(changed) == [("good evening", ["text"]), ("hello", ["text"])]
    assert result["gate"] == ["changed_texts>10% (measured 33.3%)"]


async def test_a_removed_document_changes_the_sources_of_the_turns_it_served_and_the_judge_weighs_them(
    recorded: tuple[Settings, list[str]], tmp_path: Path
) -> None:
    settings, ids = recorded
    knowledge = tmp_path / "knowledge"
    shutil.copytree(settings.bot_path.parent / "knowledge", knowledge)
    (knowledge / "shipping.md").unlink()
    candidate = bot_with(settings, tmp_path, knowledge_dir=str(knowledge))
    judge = FakeLlm(
        plans=[Plan(text='{"supported": true, "verdict": "worse", "reason": "no delivery times"}')]
    )
    async with served_llm(judge) as url:
        result = await evaluate(
            settings,
            candidate,
            conversations_of(settings, ids),
            report=tmp_path / "removed",
            conditions=[],
            judge=JudgeEndpoint(url, "judge-model"),
        )
    report = json.loads((tmp_path / "removed" / "report.json").read_text())
    changed = {t["user_text"]: t for t in report["turns"] if t["changes"]}
    assert list(changed) == ["how long does standard shipping take within Germany?"]
    turn = changed["how long does standard shipping take within Germany?"]
    assert "sources" in turn["changes"] and "shipping" in turn["recorded"]["sources"]
    assert "shipping" not in turn["candidate"]["sources"]
    assert turn["judge"]["verdict"] == "worse" and turn["judge"]["rubric"].startswith("judge@v1#")
    assert result["summary"]["judged"] == 1 and result["summary"]["judged_worse"] == 1
    assert len(judge.requests) == 1 and "Candidate answer" in judge.requests[0]["messages"][0]["content"]
    assert any("shipping@v" in d for d in result["sides"]["recorded"]["documents"])
    assert not any("shipping@v" in d for d in result["sides"]["candidate"]["documents"])


def test_export_writes_the_filtered_conversations_and_bad_input_is_refused(
    recorded: tuple[Settings, list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, ids = recorded
    monkeypatch.setenv("DIALOGUE_DATABASE_URL", settings.resolved_database_url)
    monkeypatch.setenv("DIALOGUE_DATA_DIR", str(settings.data_dir))
    out = tmp_path / "down.jsonl"
    exported = CliRunner().invoke(
        app, ["eval", "export", "--out", str(out), "--rated-down", "--tenant", "default"]
    )
    assert exported.exit_code == 0, exported.output
    rated = [c for c in read_export(out) if c.key.split("/", 1)[1] in ids]
    assert len(rated) == 1 and rated[0].turns[1].rating == "down"
    refused = CliRunner().invoke(
        app,
        [
            "eval",
            "run",
            "--bot",
            str(settings.bot_path),
            "--report",
            str(tmp_path),
            "--fail-if",
            "changed>lots",
        ],
    )
    assert refused.exit_code == 2 and "write it as NAME>NUMBER" in refused.output
