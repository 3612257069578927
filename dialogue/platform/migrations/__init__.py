"""Schema migrations of the SQL store (Alembic), and bringing a database to the newest one safely.

`upgrade` is what `init_db` (the API, the worker, `dialogue up`) and `dialogue db upgrade`
run. Processes that start at the same moment take turns under a lock: a PostgreSQL advisory
lock, or a file lock beside a SQLite database. The first migrates, the others then find the
schema at the head. A database whose tables `create_all` made, before migrations existed, is
adopted: stamped with the baseline once its tables are found to be the models' (or the models'
but for `message.author`, which is then added), refused with the differences named otherwise.

Alembic is configured in code (`alembic_config`): no `alembic.ini` is needed. To write a new
revision, `alembic.command.revision(alembic_config(url), message, autogenerate=True)` against a
database at the head, then check the generated file by hand.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Engine
from sqlmodel import SQLModel
from sqlmodel.sql.sqltypes import AutoString

from dialogue.platform.db import UtcDateTime

SCRIPT_LOCATION = Path(__file__).parent
BASELINE = "0001"
"""The revision whose schema is what `create_all` made before migrations existed."""
LATER_TABLES = frozenset(
    {
        "tool_result",
        "mcp_tool_pin",
        "conversation_owner",
        "bot_version",
        "bot_release",
        "bot_turn",
        "satisfaction",
        "memory_item",
        "memory_consent",
        "channel_delivery",
        "channel_thread",
    }
)
"""Tables the revisions after the baseline create: a create_all database, made before them, has none of
them, and adoption compares only the others with the models (the later revisions then add these)."""
LOCK_KEY = 0x6469616C6F677565
"""The advisory lock's key ("dialogue" in ASCII); advisory locks are per database."""

__all__ = [
    "BASELINE",
    "LATER_TABLES",
    "Migrated",
    "SchemaMismatch",
    "alembic_config",
    "current_revision",
    "head",
    "known",
    "upgrade",
]


class SchemaMismatch(RuntimeError):
    """The store's tables exist without a revision and differ from the models: nothing was changed."""


@dataclass(frozen=True)
class Migrated:
    """What `upgrade` found, and the revision it left."""

    before: str | None
    """The revision found; None for an empty database or one whose tables create_all made."""
    after: str
    adopted: bool = False
    """The tables were there without a revision (create_all) and were stamped with the baseline."""


def alembic_config(url: str) -> Config:
    """Alembic's configuration for the store at `url`: the scripts ship inside this package."""
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    # The configuration interpolates "%": a URL-encoded password must pass through untouched.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


@lru_cache
def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config(""))


def head() -> str:
    """The newest revision."""
    revision = _scripts().get_current_head()
    assert revision is not None, f"no migrations in {SCRIPT_LOCATION}"
    return revision


def known(revision: str) -> bool:
    """Whether this version of the code has the revision (a newer release may have migrated further)."""
    return any(script.revision == revision for script in _scripts().walk_revisions())


def current_revision(engine: Engine) -> str | None:
    """The database's revision; None when it has none (empty, or made by create_all)."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine) -> Migrated:
    """Bring the schema to the head revision, one process at a time; adopt a create_all database.

    Raises SchemaMismatch when tables without a revision differ from the models beyond
    the one known gap (`message.author`).
    """
    if engine.dialect.name == "postgresql":
        # Most starts find the schema current: answer those without the lock, which a connection pooler
        # in transaction mode (PgBouncer) cannot hold for a session. (Not on SQLite: a second process
        # opening a file that another is creating fails with "database is locked" instead of waiting.)
        current = current_revision(engine)
        if current == head() or (current is not None and not known(current)):
            return Migrated(current, current)
    with _migration_lock(engine) as connection:
        before = MigrationContext.configure(connection).get_current_revision()
        connection.commit()  # Alembic runs the migrations in a transaction of its own
        if before == head() or (before is not None and not known(before)):
            # A revision this code does not know is a newer release's: during a rolling deploy the
            # previous release's replicas still start against it (revisions stay compatible with it).
            return Migrated(before, before)
        adopted = before is None and _adopt(connection)
        config = alembic_config(engine.url.render_as_string(hide_password=False))
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
        connection.commit()
        return Migrated(before, head(), adopted)


@contextmanager
def _migration_lock(engine: Engine) -> Iterator[Connection]:
    """A connection that alone may migrate this database until the block ends."""
    database = engine.url.database
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            # A session lock on this connection: it outlives the migrations' own transactions.
            connection.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": LOCK_KEY})
            connection.commit()
            try:
                yield connection
            finally:
                connection.rollback()  # a failed migration leaves its transaction aborted
                connection.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": LOCK_KEY})
                connection.commit()
    elif engine.dialect.name == "sqlite" and database and database != ":memory:":
        # The lock file is left in place: removing it would race with a process about to take it.
        with open(f"{database}.migrate.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            with engine.connect() as connection:
                yield connection
    else:  # in-memory SQLite is private to its process
        with engine.connect() as connection:
            yield connection


def _adopt(connection: Connection) -> bool:
    """Stamp tables made by create_all with the baseline; False when there are none (an empty database)."""
    if not set(sa.inspect(connection).get_table_names()) & set(SQLModel.metadata.tables):
        return False
    # create_all predates every revision, so its tables can only be the baseline's: they are compared with
    # the models but for the tables later revisions add (LATER_TABLES; a revision that changes a baseline
    # table must make this compare with the baseline's own schema instead).
    context = MigrationContext.configure(
        connection, opts={"include_name": include_name, "include_object": _in_baseline}
    )
    differences = compare_metadata(context, SQLModel.metadata)
    if _only_author_missing(differences):
        # The one column added after the first deployments: add it rather than refuse.
        Operations(context).add_column("message", sa.Column("author", sa.String(length=200), nullable=True))
    elif differences:
        raise SchemaMismatch(
            "the database has the store's tables but no migration revision, and they differ from the "
            f"models: {'; '.join(_describe(d) for d in differences)}. Nothing was changed."
        )
    context.stamp(_scripts(), BASELINE)
    connection.commit()
    return True


def _only_author_missing(differences: list[Any]) -> bool:
    if len(differences) != 1 or not isinstance(differences[0], tuple) or differences[0][0] != "add_column":
        return False
    _kind, _schema, table, column = differences[0]
    return bool(table == "message" and column.name == "author")


def _describe(difference: Any) -> str:
    """One of compare_metadata's differences in words (they are tuples, or lists of a column's)."""
    if isinstance(difference, list):
        return "; ".join(_describe(d) for d in difference)
    kind, *rest = difference
    action, _, what = kind.partition("_")
    if action == "modify":
        _schema, table, column, _info, found, wanted = rest
        return f"{table}.{column} {what} is {found} in the database, {wanted} in the models"
    state = {"add": "missing", "remove": "unexpected"}.get(action, action)
    if what == "column":
        return f"{state} column {rest[1]}.{rest[2].name}"
    item = rest[0]
    table = getattr(getattr(item, "table", None), "name", None)
    name = getattr(item, "name", None) or ", ".join(c.name for c in getattr(item, "columns", ()))
    return f"{state} {what} {name}" + (f" on {table}" if table and table != name else "")


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """Only the store's tables: a database shared with other software keeps its tables to itself."""
    return type_ != "table" or name in SQLModel.metadata.tables


def _in_baseline(item: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    """Whether a table of the models (or a part of one) is the baseline's: not one of LATER_TABLES."""
    table = name if type_ == "table" else getattr(getattr(item, "table", None), "name", None)
    return table not in LATER_TABLES


def render_item(type_: str, obj: Any, autogen_context: Any) -> str | Literal[False]:
    """Write the models' own column types as portable SQLAlchemy ones in generated revisions."""
    if type_ == "type" and isinstance(obj, UtcDateTime):
        return "sa.DateTime(timezone=True)"
    if type_ == "type" and isinstance(obj, AutoString):
        return f"sa.String(length={obj.length})" if obj.length else "sa.String()"
    return False
