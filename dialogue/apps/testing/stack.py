"""The bot's own stack for conversation tests, in this process: a Temporal dev server of its own, a worker,
the API over real HTTP on loopback, a scratch SQLite store with the bot's knowledge base, and a stand-in
OpenAI-compatible model that the tests script. Nothing of it outlives the run but the NLU model, trained
once into the deployment's model folder (as `dialogue up` does) and reused.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import tempfile
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from dialogue.apps.testing.stand_in_llm import FakeLlm, Plan
from dialogue.brain.knowledge import documents
from dialogue.brain.knowledge.search import router_search
from dialogue.brain.nlu.model import ensure_bot_model
from dialogue.platform.bot import BotDefinition, load_bot
from dialogue.platform.db import get_engine, init_db
from dialogue.platform.flags import FlagSettings
from dialogue.platform.settings import Settings
from dialogue.platform.temporal import SEARCH_ATTRIBUTES

UNSCRIPTED = "(the stand-in model has no script for this test)"


@dataclass
class Stack:
    stand_in: FakeLlm
    bot: BotDefinition
    documents: set[str]
    """The ids of the documents in its knowledge base."""
    _settings: Settings
    _temporal: Client
    _exits: AsyncExitStack
    _apis: dict[str, httpx.AsyncClient]

    async def api(self, flags: FlagSettings | None = None) -> httpx.AsyncClient:
        """The API (with the stack's admin key) whose conversations have these flags on top of the
        deployment's: one API per set of flags, all on the one worker (flags travel with each turn)."""
        from api import create_app  # loads the API's stack: only when run

        wanted = self._settings.flags | (flags or {})
        name = json.dumps(wanted, sort_keys=True)
        if name not in self._apis:
            app = create_app(self._settings.model_copy(update={"flags": wanted}), temporal=self._temporal)
            url = await self._exits.enter_async_context(served(app))
            self._apis[name] = await self._exits.enter_async_context(
                httpx.AsyncClient(
                    base_url=url,
                    headers={"Authorization": f"Bearer {self._settings.api_key}"},
                    timeout=self._settings.turn_timeout_seconds + 10,
                )
            )
        return self._apis[name]


@asynccontextmanager
async def in_process_stack(bot_path: Path, deployment: Settings) -> AsyncIterator[Stack]:
    """The stack for `bot_path`, with `deployment`'s settings for what the tests do not replace (timeouts,
    the NLU model's folder); its model is the stand-in, its store and Temporal are scratch ones, and its
    flags are the defaults with the LLM generator off (a test file sets its own)."""
    from worker import build_worker  # loads the bot's whole stack: only when run

    bot = load_bot(bot_path)
    stand_in = FakeLlm(plans=[Plan(text=UNSCRIPTED)])
    with tempfile.TemporaryDirectory(prefix="dialogue-test-") as scratch:
        folder = Path(scratch)
        async with served(stand_in.app()) as llm_url:
            settings = deployment.model_copy(
                update={
                    "bot_path": bot_path,
                    "data_dir": folder,
                    "database_url": f"sqlite:///{folder / 'store.db'}",
                    "nlu_model_dir": deployment.nlu_model_path(bot.name),
                    "task_queue": f"convtest-{secrets.token_hex(4)}",
                    "api_key": f"convtest-{secrets.token_urlsafe(16)}",
                    "generator": "openai",
                    "llm_base_url": f"{llm_url}/v1",
                    "llm_model": "stand-in",
                    "rate_limit_per_second": 0,
                    "knowledge_reload_seconds": 0,
                    "workflow_sandbox": True,  # a test run catches nondeterministic workflow code
                    # The run's own throwaway dev server, whose client is plain: no payload keys to find
                    # (production, the default, would ask for them) and no codec server to serve.
                    "payload_encryption": False,
                    # Answers from the knowledge base come from the grounded generator, whatever the
                    # deployment says: a file that scripts the model sets `flags: {llm_generator: true}`.
                    "flags": {"llm_generator": False},
                }
            )
            engine = get_engine(settings.resolved_database_url)
            init_db(engine)
            files = documents.knowledge_files([bot.resolve(bot.knowledge_dir)]) if bot.knowledge_dir else []
            ingested = {documents.ingest_path(engine, path).document_id for path in files}
            await asyncio.to_thread(
                ensure_bot_model,
                bot,
                settings.nlu_model_path(bot.name),
                search=router_search(engine, settings),
            )
            env = await WorkflowEnvironment.start_local(
                dev_server_existing_path=str(settings.temporal_binary),
                data_converter=pydantic_data_converter,
                search_attributes=SEARCH_ATTRIBUTES,
                dev_server_log_level="error",
            )
            try:
                settings = settings.model_copy(
                    update={"temporal_address": env.client.service_client.config.target_host}
                )
                with ThreadPoolExecutor(8) as executor:
                    async with (
                        build_worker(env.client, settings, executor=executor),
                        AsyncExitStack() as exits,
                    ):
                        yield Stack(stand_in, bot, ingested, settings, env.client, exits, {})
            finally:
                await env.shutdown()


@asynccontextmanager
async def served(app: object) -> AsyncIterator[str]:
    """An ASGI app on a free loopback port, in this event loop, for the block; yields its base URL
    (the test suite serves its apps and stand-ins with it too)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # An event stream a test leaves open does not hold the server's stop longer than this (as in production).
    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        host="127.0.0.1",
        port=port,
        log_level="warning",
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
