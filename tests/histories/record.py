"""Record a conversation's history for the replay tests: `python -m tests.histories.record NAME`.

Runs a scripted conversation (greeting, knowledge answer, the order flow with a detour, a
goodbye that ends it) on a dev server of its own with a real worker, and writes the history
to `tests/histories/NAME.json`. Record one whenever the workflow changes shape, and keep the
old ones: CI replays them all against the current code, so a change that would break
running conversations fails CI.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from temporalio.client import WithStartWorkflowOperation
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from dialogue.bot import load_bot
from dialogue.db import get_engine, init_db
from dialogue.knowledge import store
from dialogue.nlu.model import ensure_bot_model
from dialogue.settings import Settings
from dialogue.temporal import SEARCH_ATTRIBUTES, workflow_id
from worker import build_worker
from workflows.contracts import TurnRequest
from workflows.conversation import ConversationWorkflow
from workflows.starting import conversation_input, start_options

SCRIPT = [
    "hello",
    "how much does express shipping cost?",
    "where is my order?",
    "can I pay with PayPal?",
    "it is NW-000000",
    "sorry, NW-482913",
    "goodbye!",
]


async def record(name: str) -> Path:
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        settings = Settings(
            data_dir=folder,
            database_url=f"sqlite:///{folder / 'store.db'}",
            task_queue=f"record-{uuid.uuid4()}",
            api_key="unused",
            nlu_model_dir=folder / "nlu",
        )
        bot = load_bot(settings.bot_path)
        engine = get_engine(settings.resolved_database_url)
        init_db(engine)
        assert bot.knowledge_dir
        for path in store.knowledge_files([bot.resolve(bot.knowledge_dir)]):
            store.ingest_path(engine, path)
        ensure_bot_model(bot, folder / "nlu")
        env = await WorkflowEnvironment.start_local(
            dev_server_existing_path=str(settings.temporal_binary),
            data_converter=pydantic_data_converter,
            search_attributes=SEARCH_ATTRIBUTES,
        )
        try:
            conversation_id = f"history-{name}"
            with ThreadPoolExecutor(4) as executor:
                async with build_worker(env.client, settings, executor=executor):
                    for text in SCRIPT:
                        start = WithStartWorkflowOperation(
                            ConversationWorkflow.run,
                            conversation_input(settings, conversation_id),
                            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                            **start_options(settings, conversation_id),
                        )
                        await env.client.execute_update_with_start_workflow(
                            ConversationWorkflow.turn, TurnRequest(text=text), start_workflow_operation=start
                        )
                    handle = env.client.get_workflow_handle(workflow_id(conversation_id))
                    await handle.result()
                    history = await handle.fetch_history()
        finally:
            await env.shutdown()
    target = Path(__file__).parent / f"{name}.json"
    target.write_text(history.to_json())
    return target


if __name__ == "__main__":
    print(asyncio.run(record(sys.argv[1])))
