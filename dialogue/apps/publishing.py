"""`dialogue bot publish`: a bot folder becomes a stored, immutable version, once it has passed its gates.

It is validated (read as a bot definition), its NLU trained (with the router calibrated on the
deployment's knowledge base, as `dialogue up` trains it; the model's card says on what data and how it
did on held-out examples), its conversation tests run against it on a scratch stack, recorded
conversations replayed against it when the bot has a stable version to compare with, and the card's gates
(`nlu.gates` in bot.yaml) decide: only a version that passes them is packed with its model into the store,
its card and what it was tested with in its manifest.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from sqlalchemy.engine import Engine
from sqlmodel import Session

from dialogue.apps.learning.card import complete_card, conversation_tests, replay_evaluation
from dialogue.apps.testing.runner import TestResult
from dialogue.brain.knowledge.search import router_search
from dialogue.brain.nlu.model import ensure_bot_model
from dialogue.brain.nlu.model_card import ConversationTests, ReplayEvaluation, has_card
from dialogue.platform.bot import NluGates, load_bot
from dialogue.platform.bot_versions import (
    BotRef,
    bot_files,
    content_address,
    file_digests,
    get_version,
    pack,
    store_version,
)
from dialogue.platform.db import KnowledgeRevision, get_engine, init_db
from dialogue.platform.releases import get_release
from dialogue.platform.settings import Settings

log = logging.getLogger("dialogue.apps.publishing")


class PublishRefused(Exception):
    """The version failed a gate: it is not stored."""

    def __init__(self, message: str, failed: list[str]) -> None:
        super().__init__(message)
        self.failed = failed


@dataclass
class Published:
    ref: BotRef
    stored: bool
    """False: this version was published before (the same files); nothing was stored now."""
    details: dict[str, Any] = field(default_factory=dict)


REPLAYED_CONVERSATIONS = 50
"""Recorded conversations (the most recent) replayed against a new version of a bot with a stable one."""


def publish(
    settings: Settings,
    bot_path: Path,
    *,
    actor: str,
    run_tests: bool = True,
    replay: bool = True,
    console: Console | None = None,
) -> Published:
    """Publish the bot whose definition is `bot_path`: validate, train, test, replay, gate, store.
    `run_tests` / `replay` False skip a measurement: the card says it was skipped, and its gate passes."""
    bot = load_bot(bot_path)
    files = bot_files(bot_path, bot)
    digests = file_digests(files)
    version = content_address(digests)
    engine = get_engine(settings.resolved_database_url)
    init_db(engine)
    existing = get_version(engine, bot.name, version)
    if existing is not None and existing.version == version:
        return Published(BotRef(bot.name, version), stored=False, details=dict(existing.manifest))
    details: dict[str, Any] = {"source": str(bot_path.resolve())}
    with tempfile.TemporaryDirectory(prefix="dialogue-publish-") as scratch:
        model_folder = Path(scratch) / "model"
        deployed = settings.nlu_model_path(bot.name)
        if deployed.is_dir():
            # The deployment's model of this bot (`dialogue up` trained it): kept when it was trained on the
            # same data, else trained again below.
            shutil.copytree(deployed, model_folder)
        if bot.nlu is not None and settings.nlu_backend != "keywords":
            trained = ensure_bot_model(bot, model_folder, search=router_search(engine, settings))
            if trained is not None:
                meta, _ = trained
                details["nlu_model"] = meta.version
                details["nlu_examples"] = meta.n_examples
        tests = bot_path.parent / "tests"
        console = console or Console()
        if run_tests and tests.is_dir():
            results = _run_tests(settings, bot_path, model_folder, tests, console)
            tested = conversation_tests(results)
            details["tests"] = tested.model_dump() | {
                "failing": [f"{r.loaded.file.name}:{r.loaded.line}" for r in results if r.outcome == "failed"]
            }
        else:
            tested = ConversationTests(passed=0, failed=0, skipped=0)
            details["tests"] = {"skipped": "no tests folder" if run_tests else "--no-tests"}
        if has_card(model_folder):
            compared = (
                _replay(settings, engine, bot.name, bot_path, Path(scratch), console) if replay else None
            )
            card, failed = complete_card(
                model_folder,
                bot.nlu.gates if bot.nlu is not None else NluGates(),
                tests=tested,
                replay=compared or ReplayEvaluation(stable_version=None, report="skipped (--no-replay)"),
            )
            details["model_card"] = card.model_dump(mode="json")
            if failed:
                raise PublishRefused(f"{bot.name}@{version} fails its gates: " + "; ".join(failed), failed)
        elif details["tests"].get("failed"):
            raise PublishRefused(
                f"{bot.name}@{version}: {details['tests']['failed']} conversation tests failed",
                ["conversation tests"],
            )
        details["knowledge_revision"] = _knowledge_revision(engine)
        archive = pack(files, model_folder if model_folder.is_dir() else None)
    row, stored = store_version(
        engine,
        bot,
        digests,
        archive,
        definition=files["bot.yaml"].read_text(encoding="utf-8"),
        actor=actor,
        details=details,
    )
    return Published(BotRef(row.bot, row.version), stored=stored, details=dict(row.manifest))


def _run_tests(
    settings: Settings, bot_path: Path, model_folder: Path, tests: Path, console: Console
) -> list[TestResult]:
    from dialogue.apps.testing.suite import prepare, print_results, run_tests

    bot = load_bot(bot_path)
    candidate = settings.model_copy(update={"bot_path": bot_path, "nlu_model_dir": model_folder})
    results = asyncio.run(run_tests(prepare(bot, [tests]), candidate, console, against=None, key=None))
    print_results(results, console)
    return results


def _replay(
    settings: Settings, engine: Engine, bot: str, bot_path: Path, scratch: Path, console: Console
) -> ReplayEvaluation | None:
    """The most recent recorded conversations re-sent to the new version, compared with what was answered
    (`dialogue eval run`), when the bot has a stable version; None when it has none (a first version)."""
    from dialogue.apps.evaluation.run import evaluate
    from dialogue.apps.evaluation.source import Filters, recorded_conversations

    release = get_release(engine, bot)
    if release is None:
        return None
    conversations = recorded_conversations(engine, Filters(limit=REPLAYED_CONVERSATIONS))
    if not conversations:
        return replay_evaluation(None, stable_version=release.stable)
    report = scratch / "replay"
    candidate = settings.model_copy(update={"nlu_model_dir": scratch / "model"})
    result = asyncio.run(
        evaluate(candidate, bot_path, conversations, report=report, conditions=[], console=console)
    )
    return replay_evaluation(result, stable_version=release.stable)


def _knowledge_revision(engine: Any) -> int | None:
    with Session(engine) as session:
        row = session.get(KnowledgeRevision, 1)
        return row.revision if row is not None else None
