"""`dialogue bot publish`: a bot folder becomes a stored, immutable version, once it has passed its gates.

It is validated (read as a bot definition), its NLU trained (with the router calibrated on the
deployment's knowledge base, as `dialogue up` trains it), its conversation tests run against it on a
scratch stack, and only then packed with its model into the store, with what it was tested with.
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
from sqlmodel import Session

from dialogue.brain.knowledge.search import router_search
from dialogue.brain.nlu.model import ensure_bot_model
from dialogue.platform.bot import load_bot
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


def publish(
    settings: Settings, bot_path: Path, *, actor: str, run_tests: bool = True, console: Console | None = None
) -> Published:
    """Publish the bot whose definition is `bot_path`: validate, train, test, store."""
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
        if run_tests and tests.is_dir():
            details["tests"] = _run_tests(settings, bot_path, model_folder, tests, console or Console())
            if details["tests"]["failed"]:
                raise PublishRefused(
                    f"{bot.name}@{version}: {details['tests']['failed']} conversation tests failed",
                    ["conversation tests"],
                )
        else:
            details["tests"] = {"skipped": "no tests folder" if run_tests else "--no-tests"}
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
) -> dict[str, Any]:
    from dialogue.apps.testing.suite import prepare, print_results, run_tests

    bot = load_bot(bot_path)
    candidate = settings.model_copy(update={"bot_path": bot_path, "nlu_model_dir": model_folder})
    results = asyncio.run(run_tests(prepare(bot, [tests]), candidate, console, against=None, key=None))
    print_results(results, console)
    counts: dict[str, Any] = {
        outcome: sum(r.outcome == outcome for r in results) for outcome in ("passed", "failed", "skipped")
    }
    counts["failing"] = [f"{r.loaded.file.name}:{r.loaded.line}" for r in results if r.outcome == "failed"]
    return counts


def _knowledge_revision(engine: Any) -> int | None:
    with Session(engine) as session:
        row = session.get(KnowledgeRevision, 1)
        return row.revision if row is not None else None
