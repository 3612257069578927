"""Schema migrations on SQLite and the real PostgreSQL: upgrade, agreement with the models, adoption
of databases made by `create_all`, concurrent upgrades, and a turn served from a migrated store."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import Engine
from sqlmodel import SQLModel
from temporalio.client import Client

from api import create_app
from dialogue.model.contracts import RecordMessageRequest
from dialogue.platform import store
from dialogue.platform.bot import BotDefinition
from dialogue.platform.db import get_engine, init_db
from dialogue.platform.migrations import (
    LATER_TABLES,
    SchemaMismatch,
    alembic_config,
    current_revision,
    head,
    include_name,
    upgrade,
)
from dialogue.platform.settings import Settings
from tests.conftest import api_client, ingest_knowledge
from worker import build_worker


@pytest.fixture(params=["sqlite", "sqlite-memory", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database without tables."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    if request.param == "sqlite-memory":
        return "sqlite://"
    return str(request.getfixturevalue("postgres_url"))


def differences(engine: Engine) -> list[Any]:
    """What Alembic's autogenerate would change to make the database match the models."""
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"include_name": include_name})
        return list(compare_metadata(context, SQLModel.metadata))


def later(difference: Any) -> bool:
    """A table a later revision adds, or an index of one: what a create_all database lacks by design."""
    kind, item = difference[0], difference[1]
    table = item.name if kind == "add_table" else getattr(getattr(item, "table", None), "name", None)
    return kind in ("add_table", "add_index") and table in LATER_TABLES


def made_by_create_all(url: str, *, with_author: bool) -> Engine:
    """A store as the code before migrations left it, with a conversation in it."""
    engine = get_engine(url)
    tables = [table for name, table in SQLModel.metadata.tables.items() if name not in LATER_TABLES]
    SQLModel.metadata.create_all(engine, tables=tables)
    with engine.begin() as connection:
        if not with_author:
            connection.execute(text("ALTER TABLE message DROP COLUMN author"))
        connection.execute(
            text(
                "INSERT INTO conversation (id, status, turn_count, created_at, updated_at) "
                "VALUES ('default/old', 'active', 1, :at, :at)"
            ),
            {"at": datetime(2026, 1, 1, tzinfo=UTC)},
        )
    return engine


def test_an_empty_database_is_upgraded_to_the_head_and_matches_the_models(empty_url: str) -> None:
    engine = get_engine(empty_url)
    assert current_revision(engine) is None

    assert init_db(engine) == head()
    assert current_revision(engine) == head()
    assert differences(engine) == []
    assert init_db(engine) == head()  # again: nothing to do


@pytest.mark.parametrize("empty_url", ["sqlite", "postgresql"], indirect=True)
def test_the_migrations_downgrade_to_nothing_and_upgrade_again(empty_url: str) -> None:
    engine = get_engine(empty_url)
    init_db(engine)
    # Alembic's own commands, connecting by URL: the configuration must carry it intact.
    command.downgrade(alembic_config(empty_url), "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    command.upgrade(alembic_config(empty_url), "head")
    assert current_revision(engine) == head()
    assert differences(engine) == []


@pytest.mark.parametrize("empty_url", ["sqlite", "postgresql"], indirect=True)
@pytest.mark.parametrize("with_author", [True, False], ids=["current", "without-message-author"])
def test_a_database_made_by_create_all_is_adopted_and_keeps_its_rows(
    empty_url: str, with_author: bool
) -> None:
    engine = made_by_create_all(empty_url, with_author=with_author)
    missing = [d for d in differences(engine) if not later(d)]
    assert (missing == []) is with_author

    migrated = upgrade(engine)

    assert (migrated.before, migrated.after, migrated.adopted) == (None, head(), True)
    assert differences(engine) == []
    assert store.get_conversation(engine, "default/old") is not None
    store.record_message(
        engine,
        RecordMessageRequest(
            conversation_id="default/old",
            turn_id="handoff-1",
            turn_index=1,
            role="agent",
            text="Hello, this is Ana.",
            author="ana",
            event="agent_message",
            at=datetime(2026, 1, 1, 0, 5, tzinfo=UTC),
        ),
    )
    rows, _ = store.read_messages(engine, "default/old", limit=10, offset=0)
    assert [(m.role, m.author) for m in rows] == [("agent", "ana")]
    assert upgrade(engine).adopted is False  # stamped: the next start just finds the head


@pytest.mark.parametrize("empty_url", ["sqlite", "postgresql"], indirect=True)
def test_tables_that_differ_from_the_models_are_refused_and_left_as_they_were(empty_url: str) -> None:
    engine = made_by_create_all(empty_url, with_author=True)
    with engine.begin() as connection:
        connection.execute(text("ALTER TABLE feedback ADD COLUMN mood VARCHAR(20)"))
        connection.execute(text("DROP INDEX ix_api_key_tenant"))

    with pytest.raises(SchemaMismatch) as refused:
        init_db(engine)

    assert "unexpected column feedback.mood" in str(refused.value)
    assert "missing index ix_api_key_tenant" in str(refused.value)
    assert current_revision(engine) is None
    assert "alembic_version" not in inspect(engine).get_table_names()


@pytest.mark.parametrize("empty_url", ["sqlite", "postgresql"], indirect=True)
def test_two_processes_upgrading_one_fresh_database_at_once_both_succeed(
    empty_url: str, tmp_path: Path
) -> None:
    environment = os.environ | {"DIALOGUE_DATABASE_URL": empty_url, "DIALOGUE_DATA_DIR": str(tmp_path)}

    def dialogue_db(*args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "dialogue", "db", *args],
            env=environment,
            cwd=tmp_path,  # no .env of a developer's checkout
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    upgrades = [dialogue_db("upgrade") for _ in range(2)]
    outputs = [process.communicate(timeout=120) for process in upgrades]

    assert [process.returncode for process in upgrades] == [0, 0], outputs
    lines = sorted(out.strip() for out, _ in outputs)
    # One migrated; the other waited for the lock and found the schema at the head.
    assert lines == sorted([f"schema revision: none -> {head()}", f"schema revision: {head()} (up to date)"])
    current = dialogue_db("current")
    assert current.communicate(timeout=120)[0].strip() == f"schema revision: {head()} (up to date)"
    assert differences(get_engine(empty_url)) == []


def test_a_schema_that_a_newer_release_migrated_is_left_as_it_is(tmp_path: Path) -> None:
    # A rolling deploy: the new release migrated, a replica of the previous one restarts.
    engine = get_engine(f"sqlite:///{tmp_path / 'store.db'}")
    init_db(engine)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = 'f00d'"))
    assert init_db(engine) == "f00d"
    assert differences(engine) == []


def test_the_revisions_after_the_baseline_only_add_the_later_tables() -> None:
    # Adoption stamps the baseline after comparing the tables with the models but LATER_TABLES: that
    # holds only while the later revisions add tables and change none of the baseline's. A revision that
    # changes a baseline table must make adoption compare with the baseline's own schema.
    # 0003 adds the knowledge base's full-text index, which is not a table of the models (FTS5 makes a
    # virtual table): adoption and autogenerate leave it aside; 0004 only rewrites its rows.
    # 0005 adds the end users' conversations, 0006 the MCP servers' tool pins, 0007 the bots' versions
    # and releases, and what the numbers per version count (its turns, the users' satisfaction); 0008 the
    # end users' memory and their consent to it; 0009 the messaging platforms' deliveries and threads.
    assert (
        head() == "0009"
        and {
            "tool_result",
            "conversation_owner",
            "mcp_tool_pin",
            "bot_version",
            "bot_release",
            "bot_turn",
            "satisfaction",
            "memory_item",
            "memory_consent",
            "channel_delivery",
            "channel_thread",
        }
        == LATER_TABLES
    )


@pytest.mark.parametrize("knowledge_index", ["memory", "store"])
async def test_a_turn_through_the_api_and_a_worker_is_stored_in_postgresql(
    client: Client, settings: Settings, postgres_url: str, demo_bot: BotDefinition, knowledge_index: str
) -> None:
    """With either index engine: `store` searches the words with PostgreSQL's full-text search."""
    on_postgres = settings.model_copy(
        update={"database_url": postgres_url, "knowledge_index": knowledge_index}
    )
    engine = get_engine(postgres_url)
    init_db(engine)
    ingest_knowledge(engine, demo_bot)
    conversation_id = f"pg-{uuid.uuid4().hex[:10]}"

    with ThreadPoolExecutor(max_workers=8) as executor:
        async with (
            build_worker(client, on_postgres, executor=executor),
            api_client(create_app(on_postgres, temporal=client)) as http,
        ):
            response = await http.post(
                f"/v1/conversations/{conversation_id}/turns", json={"text": "What is your returns policy?"}
            )
            transcript = (await http.get(f"/v1/conversations/{conversation_id}/messages")).json()

    assert response.status_code == 200, response.text
    reply = response.json()["reply"]
    assert reply["sources"] and reply["sources"][0]["document_id"] == "returns", response.json()
    assert transcript["total"] == 2
    with engine.connect() as connection:
        assert connection.execute(text("SELECT version()")).scalar_one().startswith("PostgreSQL")
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == head()
        rows = connection.execute(
            text(
                "SELECT role, text, sources FROM message WHERE conversation_id = :key "
                "ORDER BY turn_index, role DESC"
            ),
            {"key": f"default/{conversation_id}"},
        ).all()
    assert [(role, text_) for role, text_, _ in rows] == [
        ("user", "What is your returns policy?"),
        ("bot", reply["text"]),
    ]
    assert rows[1].sources[0]["document_id"] == "returns"
