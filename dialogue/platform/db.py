"""The SQL store's engine and tables: the read side of conversations (index and transcript).

SQLite by default, PostgreSQL in production; the same tables on both.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Index,
    LargeBinary,
    Text,
    TypeDecorator,
    UniqueConstraint,
    event,
)
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlmodel import Field, SQLModel, create_engine

log = logging.getLogger("dialogue.platform.store")


class UtcDateTime(TypeDecorator[datetime]):
    """Stores UTC and always gives back an aware UTC datetime (SQLite itself forgets the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _utc_column(*, index: bool = False) -> Any:
    return Field(sa_type=UtcDateTime, index=index)


class Conversation(SQLModel, table=True):
    """One row per conversation: what listing and filtering read."""

    id: str = Field(primary_key=True, max_length=200)
    status: str = Field(default="active", index=True, max_length=20)
    turn_count: int = 0
    last_intent: str | None = Field(default=None, max_length=100)
    created_at: datetime = _utc_column()
    updated_at: datetime = _utc_column(index=True)
    ended_reason: str | None = Field(default=None, max_length=100)


class Message(SQLModel, table=True):
    """One row per utterance of the transcript: the user's text or the bot's reply."""

    __table_args__ = (UniqueConstraint("conversation_id", "turn_index", "role"),)

    id: str = Field(primary_key=True, max_length=300)
    """`{conversation id}:{turn index}:{role}`: a retried record finds its own row instead of adding one."""
    conversation_id: str = Field(index=True, max_length=200)
    turn_id: str = Field(max_length=200)
    turn_index: int
    role: str = Field(max_length=10)
    """`user`, `bot`, `agent` (a person's reply during a handoff) or `system` (handoff, handback)."""
    text: str
    author: str | None = Field(default=None, max_length=200)
    """The person who wrote an `agent` message, when known."""
    intent: str | None = Field(default=None, max_length=100)
    confidence: float | None = None
    degraded: bool = False
    sources: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON))
    lineage: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    """For the bot's messages: models, prompt and document versions behind the reply."""
    created_at: datetime = _utc_column()


class ConversationEvent(SQLModel, table=True):
    """The event log of a conversation: what stream clients receive (a streamed turn's NLU result,
    sources and tokens; agent messages; handoffs). Numbered per conversation, so a client that
    reconnects with the last number it saw misses nothing and sees nothing twice."""

    __tablename__ = "conversation_event"

    conversation_id: str = Field(primary_key=True, max_length=200)
    seq: int = Field(primary_key=True)
    turn_id: str | None = Field(default=None, max_length=200)
    kind: str = Field(max_length=20)
    data: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    at: float
    """Unix time the event was produced (sub-millisecond): stream latency is measured from it."""


class ApiKey(SQLModel, table=True):
    """An API key of a tenant. Only a hash of its secret is kept: the key is shown once, at creation."""

    __tablename__ = "api_key"

    id: str = Field(primary_key=True, max_length=32)
    """The key's public id, also the middle part of the key itself (`dk_<id>_<secret>`)."""
    tenant: str = Field(index=True, max_length=63)
    scope: str = Field(max_length=10)
    name: str | None = Field(default=None, max_length=200)
    secret_hash: str = Field(max_length=64)
    """SHA-256 of the secret, hex: the secrets are random 256-bit strings, so no slow hash is needed."""
    created_at: datetime = _utc_column()
    expires_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UtcDateTime)


class AuditEntry(SQLModel, table=True):
    """Who did what to which conversation: erasures and key changes. Never the content."""

    __tablename__ = "audit_entry"

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = _utc_column(index=True)
    tenant: str = Field(index=True, max_length=63)
    actor: str = Field(max_length=200)
    """The key id or token subject that asked, or `retention` for the scheduled job."""
    action: str = Field(max_length=50)
    target: str = Field(max_length=300)
    detail: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))


class Feedback(SQLModel, table=True):
    """A user's rating of one answer, kept beside the answer's lineage."""

    id: str = Field(primary_key=True, max_length=300)
    """`{conversation key}:{turn id}`: rating a turn again replaces the rating."""
    conversation_id: str = Field(index=True, max_length=200)
    turn_id: str = Field(max_length=200)
    rating: str = Field(max_length=10)
    comment: str | None = None
    """Redacted like a turn's text."""
    author: str | None = Field(default=None, max_length=200)
    created_at: datetime = _utc_column(index=True)


class ToolResult(SQLModel, table=True):
    """The whole result of an agent's tool call too long for the model, which saw it cut: kept here rather
    than in Temporal's history, and linked from the answer's lineage (`stored`)."""

    __tablename__ = "tool_result"

    conversation_id: str = Field(primary_key=True, max_length=200)
    call_id: str = Field(primary_key=True, max_length=200)
    name: str = Field(max_length=64)
    size: int
    sha256: str = Field(max_length=64)
    content: str = Field(sa_type=Text)
    """JSON, redacted as the transcript is."""
    created_at: datetime = _utc_column()


class McpToolPin(SQLModel, table=True):
    """What an MCP server's tool looked like when a bot's worker first listed it: the digest of its name,
    description and input schema. A later listing that differs is refused unless the bot's declaration of
    the server consents (`accept_changes`): a server cannot change what the model is told of a tool
    under the bot."""

    __tablename__ = "mcp_tool_pin"

    bot: str = Field(primary_key=True, max_length=200)
    server: str = Field(primary_key=True, max_length=32)
    tool: str = Field(primary_key=True, max_length=64)
    sha256: str = Field(max_length=64)
    pinned_at: datetime = _utc_column()


class ConversationOwner(SQLModel, table=True):
    """The end user a conversation belongs to (one started with their end-user token, or for them by the
    integrator's server): what finds a user's conversations, and what tells another user's from theirs.
    A conversation of the integrator's server alone has no row."""

    __tablename__ = "conversation_owner"

    conversation_id: str = Field(primary_key=True, max_length=200)
    user: str = Field(index=True, max_length=128)
    created_at: datetime = _utc_column()


class MemoryItem(SQLModel, table=True):
    """One thing remembered of an end user across their conversations: a fact or preference (their name,
    delivery city, preferred language, the order last discussed), one value per kind. Kept only while the
    user consents (`MemoryConsent`); its text is redacted as the transcript is."""

    __tablename__ = "memory_item"
    __table_args__ = (
        UniqueConstraint("tenant", "user", "kind"),
        Index("ix_memory_item_user", "tenant", "user"),
    )

    id: str = Field(primary_key=True, max_length=32)
    """Derived from tenant, user and kind: remembering a kind again replaces its value in place."""
    tenant: str = Field(max_length=63)
    user: str = Field(max_length=128)
    kind: str = Field(max_length=64)
    value: str = Field(max_length=500)
    source: str = Field(max_length=10)
    """Who said it: `user` (in a turn, read by the rules), `model` (the agent's `remember`), `tool` (a tool's
    result) or `api` (the integrator or the user, over the API)."""
    conversation_id: str | None = Field(default=None, max_length=200)
    """The conversation (key) and turn it was said in, when it was."""
    turn_id: str | None = Field(default=None, max_length=200)
    created_at: datetime = _utc_column()
    updated_at: datetime = _utc_column(index=True)
    expires_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    """When retention forgets it, unless it is said again: the bot's `privacy.retention_days` after."""


class MemoryConsent(SQLModel, table=True):
    """Whether an end user lets the bot remember them across conversations. No row: not asked, no memory."""

    __tablename__ = "memory_consent"

    tenant: str = Field(primary_key=True, max_length=63)
    user: str = Field(primary_key=True, max_length=128)
    consented: bool
    at: datetime = _utc_column()
    by: str = Field(max_length=200)
    """Who set it: the user's token subject, the integrator's key, or `conversation` when they said so."""


class ChannelDelivery(SQLModel, table=True):
    """A message for a conversation's messaging platform (`activities.deliver`): what the platform took,
    so a retried delivery sends nothing twice, and the dead letters an operator may resend."""

    __tablename__ = "channel_delivery"

    id: str = Field(primary_key=True, max_length=300)
    """`Delivery.id`: the conversation, then the turn or message it carries."""
    tenant: str = Field(index=True, max_length=63)
    conversation_id: str = Field(max_length=200)
    channel: str = Field(max_length=63)
    status: str = Field(index=True, max_length=10)
    """`sending` (an attempt began: whether the platform took it is not known), `sent`, or `dead`."""
    attempts: int = 0
    last_error: str | None = Field(default=None, max_length=500)
    platform_id: str | None = Field(default=None, max_length=200)
    delivery: str = Field(sa_type=Text)
    """The `Delivery` itself (JSON), to resend. Its text is redacted as the transcript is."""
    created_at: datetime = _utc_column()
    updated_at: datetime = _utc_column(index=True)


class ChannelThread(SQLModel, table=True):
    """The conversation a platform's thread (a chat, a sender's number) is holding now: the next message
    goes to it, or to a new conversation once it has ended."""

    __tablename__ = "channel_thread"

    thread: str = Field(primary_key=True, max_length=200)
    conversation_id: str = Field(max_length=128)
    """The client's id of the conversation (its tenant is the channel's)."""
    updated_at: datetime = _utc_column()


class KnowledgeDocument(SQLModel, table=True):
    """A knowledge-base document; its version grows each time its content changes."""

    __tablename__ = "knowledge_document"

    id: str = Field(primary_key=True, max_length=200)
    title: str = Field(max_length=500)
    source: str | None = Field(default=None, max_length=1000)
    """Where it came from: a file path or URL."""
    content_type: str = Field(max_length=20)
    content_hash: str = Field(max_length=64)
    version: int = 1
    text: str = Field(sa_type=Text)
    chunk_count: int = 0
    created_at: datetime = _utc_column()
    updated_at: datetime = _utc_column()


class KnowledgeChunk(SQLModel, table=True):
    """A searchable piece of a document version: a few paragraphs under one heading."""

    __tablename__ = "knowledge_chunk"

    id: str = Field(primary_key=True, max_length=300)
    """`{document id}:{version}:{content hash, 8 hex digits}:{position}`."""
    document_id: str = Field(index=True, max_length=200)
    document_version: int
    position: int
    heading: str = Field(default="", max_length=1000)
    text: str = Field(sa_type=Text)
    embedding: bytes | None = Field(default=None, sa_type=LargeBinary)
    """float32 sentence embedding, when the embeddings extra is installed."""


class BotVersion(SQLModel, table=True):
    """A published version of a bot: immutable, named by the digest of its files (`dialogue bot publish`).
    The archive holds the bot's folder as published (bot.yaml, its data, tools and tests) and the NLU model
    trained from it, so a worker serves it without the folder and a rollback finds it as it was."""

    __tablename__ = "bot_version"

    bot: str = Field(primary_key=True, max_length=100)
    version: str = Field(primary_key=True, max_length=64)
    """The first 12 hex digits of the SHA-256 of the sorted list of the folder's files and their digests."""
    created_at: datetime = _utc_column()
    created_by: str = Field(max_length=200)
    definition: str = Field(sa_type=Text)
    """bot.yaml as published: what the API reads (privacy, flags) without unpacking the archive."""
    manifest: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    """Each file's path and digest, the model's version, the knowledge revision, the tests' outcome and
    the model card."""
    archive: bytes = Field(sa_type=LargeBinary)
    """A gzipped tar of the folder's files and, under `model/`, the trained NLU model."""


class BotRelease(SQLModel, table=True):
    """Which version of a bot new conversations get: the stable one, and a canary for a share of them."""

    __tablename__ = "bot_release"

    bot: str = Field(primary_key=True, max_length=100)
    stable: str = Field(max_length=64)
    canary: str | None = Field(default=None, max_length=64)
    canary_percent: float = 0.0
    move_running: bool = False
    """Running conversations, too, move to the version a new one would get, at their next turn."""
    previous: list[str] = Field(default_factory=list, sa_column=Column(JSON))
    """The stable versions before this one, newest last: what `rollback` goes back to."""
    updated_at: datetime = _utc_column()
    updated_by: str = Field(max_length=200)


class BotTurn(SQLModel, table=True):
    """One answered turn of a bot's version, as the numbers per version count it: no words, only what the
    turn was (degraded, a fallback, out of scope, a handoff) and how long it took. Written with the
    transcript by `record_turn`; a retried write finds its row."""

    __tablename__ = "bot_turn"
    __table_args__ = (Index("ix_bot_turn_bot_version_at", "bot", "version", "at"),)

    conversation_id: str = Field(primary_key=True, max_length=200)
    turn_id: str = Field(primary_key=True, max_length=200)
    bot: str = Field(max_length=100)
    version: str = Field(max_length=64)
    at: datetime = _utc_column()
    degraded: bool = False
    fallback: bool = False
    """The bot said it could not help (the policy's `fallback`)."""
    out_of_scope: bool = False
    """The NLU placed the message outside the bot (`out_of_scope`, or the router's best route)."""
    handoff: bool = False
    """The bot handed the conversation to a person."""
    latency_ms: float | None = None
    """The whole turn as the workflow timed it (`timings_ms.total`)."""


class Satisfaction(SQLModel, table=True):
    """A user's score of a whole conversation, 1 to 5, and the bot version that served it."""

    conversation_id: str = Field(primary_key=True, max_length=200)
    """The conversation's key: scoring it again replaces the score."""
    bot: str = Field(index=True, max_length=100)
    version: str = Field(max_length=64)
    score: int
    comment: str | None = None
    """Redacted like a turn's text."""
    author: str | None = Field(default=None, max_length=200)
    created_at: datetime = _utc_column()


class KnowledgeRevision(SQLModel, table=True):
    """One row whose number grows with every change to the knowledge base: indexes reload when it moves."""

    __tablename__ = "knowledge_revision"

    id: int = Field(default=1, primary_key=True)
    revision: int = 0


SQLITE_BUSY_SECONDS = 10
CONNECT_TIMEOUT_SECONDS = 5


@lru_cache
def get_engine(url: str) -> Engine:
    """One engine (and connection pool) per database URL per process."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # A writer waits this long for another's lock, then fails: the workflow keeps a write the store
        # cannot take and retries it (workflows/conversation/options.py, RECORD_INLINE is just above this).
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_SECONDS},
            json_serializer=_json,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # A server that cannot be reached fails a connection attempt in seconds instead of the system's
    # minutes-long TCP time-out: an outage becomes a quick, retried error, not a hung thread.
    return create_engine(
        url,
        pool_pre_ping=True,
        json_serializer=_json,
        connect_args={"connect_timeout": CONNECT_TIMEOUT_SECONDS},
    )


def _json(value: Any) -> str:
    # orjson writes NaN and infinities as null: PostgreSQL's json type refuses the bare NaN
    # that json.dumps writes (and SQLite keeps), so a stray score would fail the whole turn.
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY).decode()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the API read while the worker writes; the two are separate processes.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def init_db(engine: Engine) -> str:
    """Bring the schema to the newest migration and return its revision (see `dialogue.platform.migrations`).

    Safe when the API and the worker start at the same moment: one migrates, the other waits.
    """
    from dialogue.platform.migrations import upgrade  # it imports this module's tables

    return upgrade(engine).after


def init_db_if_reachable(engine: Engine) -> str | None:
    """`init_db` for a process starting up, unless the store cannot be reached: then None, logged. A worker
    or an API started during a store outage serves what it can without the store (turns are answered from
    Temporal) instead of exiting and being restarted in a loop; the schema is checked at its next start."""
    try:
        return init_db(engine)
    except (OperationalError, InterfaceError) as err:
        log.error(
            "the store is unreachable (%s); starting without checking its schema", err.__class__.__name__
        )
        return None
