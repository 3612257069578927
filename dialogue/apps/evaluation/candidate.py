"""The candidate side: the current worker code with another bot definition (its NLU data, prompts, model
settings, knowledge base), on a task queue and a tenant of its own (`eval`), with a scratch store: it
never touches the recorded conversations, the live store or the live index. Each recorded conversation's
user turns are sent to it in order, with the flags each turn carried, straight through Temporal."""

from __future__ import annotations

import asyncio
import secrets
import tempfile
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from temporalio.client import Client, WithStartWorkflowOperation
from temporalio.common import WorkflowIDConflictPolicy

from dialogue.apps.evaluation.source import RecordedConversation
from dialogue.brain.knowledge import documents
from dialogue.brain.knowledge.search import router_search
from dialogue.brain.nlu.data import data_hash
from dialogue.brain.nlu.model import METADATA_FILE, ModelMetadata, ensure_bot_model
from dialogue.brain.nlu.training_data import bot_training_data
from dialogue.model.contracts import (
    WORKFLOW_TYPE,
    ConversationState,
    EndRequest,
    Signals,
    TurnReply,
    TurnRequest,
    Updates,
)
from dialogue.platform.bot import BotDefinition, load_bot
from dialogue.platform.db import get_engine, init_db
from dialogue.platform.settings import Settings
from dialogue.platform.starting import conversation_input, start_options
from dialogue.platform.temporal import connect, conversation_key, workflow_id

TENANT = "eval"


class Answer(BaseModel):
    """One side's answer to a turn, as an evaluation compares it."""

    reply: str
    intent: str | None
    action: str | None
    degraded: bool
    sources: list[str]
    tool_calls: list[str]
    total_ms: float | None


class CandidateTurn(Answer):
    lineage: dict[str, Any]


@dataclass
class Candidate:
    bot: BotDefinition
    run_id: str
    settings: Settings
    """The candidate's: its scratch store, its task queue."""
    _client: Client

    async def resend(self, recorded: RecordedConversation, number: int) -> list[CandidateTurn]:
        """The candidate's answers to the conversation's user turns, sent in order."""
        conversation_id = f"{self.run_id}-{number}"
        key = conversation_key(TENANT, conversation_id)
        answers = []
        for turn in recorded.turns:
            start: WithStartWorkflowOperation[Any, ConversationState] = WithStartWorkflowOperation(
                WORKFLOW_TYPE,
                conversation_input(self.settings, conversation_id, tenant=TENANT),
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                result_type=ConversationState,
                **start_options(self.settings, key, TENANT),
            )
            started = time.perf_counter()
            reply = await self._client.execute_update_with_start_workflow(
                Updates.TURN,
                TurnRequest(text=turn.user_text, flags=turn.lineage.get("flags") or {}),
                start_workflow_operation=start,
                result_type=TurnReply,
            )
            elapsed = (time.perf_counter() - started) * 1000
            lineage = reply.lineage.model_dump(mode="json") if reply.lineage else {}
            answers.append(
                CandidateTurn(
                    reply=reply.reply.text,
                    intent=reply.nlu.intent.name,
                    action=lineage.get("action"),
                    degraded=reply.degraded,
                    sources=[source.document_id for source in reply.reply.sources],
                    tool_calls=tool_calls(lineage),
                    # As the recorded side measured it: until the reply was ready (older lineage: the turn).
                    total_ms=(lineage.get("timings_ms") or {}).get(
                        "total", reply.timings_ms.get("total", elapsed)
                    ),
                    lineage=lineage,
                )
            )
        handle = self._client.get_workflow_handle(workflow_id(key))
        await handle.signal(Signals.END, EndRequest(reason="evaluated"))
        await asyncio.wait_for(handle.result(), timeout=60)  # done before its worker goes away
        return answers


def tool_calls(lineage: dict[str, Any]) -> list[str]:
    """An answer's tool calls as `name(arguments)`, in order."""
    return [
        f"{call['name']}({call.get('arguments', {})})"
        for step in lineage.get("agent") or []
        for call in step.get("calls", [])
    ]


@asynccontextmanager
async def candidate(deployment: Settings, bot_path: Path) -> AsyncIterator[Candidate]:
    """A worker for the candidate bot, on the deployment's Temporal, until the block ends."""
    from worker import build_worker  # loads the bot's whole stack: only when run

    bot = load_bot(bot_path)
    run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    with tempfile.TemporaryDirectory(prefix="dialogue-eval-") as scratch:
        folder = Path(scratch)
        settings = deployment.model_copy(
            update={
                "bot_path": bot_path,
                "data_dir": folder,
                "database_url": f"sqlite:///{folder / 'candidate.db'}",
                "nlu_model_dir": _model_folder(deployment, bot),
                "task_queue": f"eval-{run_id}",
                "knowledge_reload_seconds": 0,
                "idle_timeout_seconds": 3600,
            }
        )
        engine = get_engine(settings.resolved_database_url)
        init_db(engine)
        for path in documents.knowledge_files([bot.resolve(bot.knowledge_dir)]) if bot.knowledge_dir else []:
            documents.ingest_path(engine, path)
        search = router_search(engine, settings)
        await asyncio.to_thread(ensure_bot_model, bot, settings.nlu_model_path(bot.name), search=search)
        client = await connect(settings)
        with ThreadPoolExecutor(8) as executor:
            async with build_worker(client, settings, executor=executor):
                yield Candidate(bot, run_id, settings, client)


def _model_folder(deployment: Settings, bot: BotDefinition) -> Path:
    """The candidate's NLU model: the deployed one when it was trained on the same data (it is only read),
    else one of its own, never the deployed one's folder (an evaluation must not retrain what serves), one
    per training set, so a second evaluation of the same data trains nothing."""
    if bot.nlu is None:
        return deployment.data_dir / "models" / "eval-none"
    examples = bot_training_data(bot).examples  # the reviewed lines too: they are its data
    deployed = deployment.nlu_model_path(bot.name)
    if (deployed / METADATA_FILE).exists():
        metadata = ModelMetadata.model_validate_json((deployed / METADATA_FILE).read_text())
        # A deployed model without a router would be trained again with one: never in its own folder.
        same = metadata.data_hash == data_hash(examples) and bot.nlu.validation is None
        if same and (metadata.router or not bot.knowledge_dir):
            return deployed
    return deployment.data_dir / "models" / f"eval-{bot.name}-{data_hash(examples)[:12]}"
