"""Start a worker: `python worker.py` or `dialogue worker`.

It serves `ConversationWorkflow` and the turn activities for the bot in settings,
until SIGINT or SIGTERM, then finishes the tasks in hand and exits.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import uvloop
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner, Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.bot_runtimes import BotActivities, BotRuntimes, bot_activities, dispatched
from activities.deliver import DeliveryActivities
from activities.generate import GenerateActivity
from activities.record import RecordActivities
from activities.retention import RetentionActivities
from activities.retrieve import RetrieveActivity
from activities.understand import UnderstandActivity
from dialogue.brain.knowledge.search import open_index
from dialogue.platform.bot import load_bot
from dialogue.platform.bot_header import BotHeaderInterceptor
from dialogue.platform.bot_versions import folder_ref
from dialogue.platform.db import get_engine, init_db_if_reachable
from dialogue.platform.logs import configure_logging
from dialogue.platform.settings import Settings, get_settings
from dialogue.platform.telemetry import (
    WorkerMetricsServer,
    exported,
    sdk_runtime,
    temporal_interceptors,
    tracer_provider,
    worker_interceptors,
)
from dialogue.platform.temporal import connect
from dialogue.platform.worker_builds import deployment_config
from workflows.conversation import ConversationWorkflow
from workflows.delivery import ResendWorkflow
from workflows.retention import RetentionWorkflow, ensure_retention_schedule

log = logging.getLogger("dialogue.worker")

SANDBOX = SandboxedWorkflowRunner(
    restrictions=SandboxRestrictions.default.with_passthrough_modules("workflows", "activities", "dialogue")
)
"""The sandbox still stops nondeterministic calls (clocks, randomness, I/O) in workflow code, but imports
our modules once per process instead of once per workflow run: re-running the workflow module for each
new conversation (or each one evicted from the cache and replayed) cost 14% of the worker's CPU under
the throughput load (bench/profile.py). They keep no module-level state a run could change."""


@dataclass(frozen=True)
class TurnActivities:
    """The activities of a turn, wired to the store and the deployment's bot, models loaded; `bots` serves
    the published versions conversations name."""

    engine: Engine
    retrieve: RetrieveActivity
    record: RecordActivities
    bots: BotRuntimes

    @property
    def own(self) -> BotActivities:
        """The activities of the worker's own bot (its folder)."""
        return self.bots.own

    # The worker's own bot's activities, as `bench/turn_latency.py` calls them without Temporal.
    @property
    def understand(self) -> UnderstandActivity:
        return self.own.understand

    @property
    def generate(self) -> GenerateActivity:
        return self.own.generate


def build_turn_activities(settings: Settings) -> TurnActivities:
    """The activities of a turn (the worker's; `bench/turn_latency.py` calls them without Temporal)."""
    bot = load_bot(settings.bot_path)
    engine = get_engine(settings.resolved_database_url)
    init_db_if_reachable(engine)
    index = open_index(
        engine,
        settings.knowledge_index,
        folder=settings.resolved_knowledge_index_dir,
        reload_seconds=settings.knowledge_reload_seconds,
        mode=settings.retrieval,
    )
    # Build the index now, not during the first user's turn.
    try:
        index.search("hello", top_k=1)
    except SQLAlchemyError as err:  # the store is down: the index is built at the first turn after it is back
        log.error("knowledge base unreachable at start (%s)", err.__class__.__name__)
    retrieve = RetrieveActivity(index)
    own = bot_activities(settings, folder_ref(settings.bot_path), bot, engine, retrieve)
    return TurnActivities(
        engine=engine,
        retrieve=retrieve,
        record=RecordActivities(engine, memory_days=bot.privacy.retention_days),
        bots=BotRuntimes(settings, engine, retrieve, own),
    )


BOT_STEPS: tuple[Callable[[BotActivities], Callable[..., Any]], ...] = (
    lambda bot: bot.understand.understand,
    lambda bot: bot.generate.generate,
    lambda bot: bot.generate.compose,
    lambda bot: bot.respond.respond_here,
    lambda bot: bot.tool.run_tool,
    lambda bot: bot.summarize.summarize,
    lambda bot: bot.memory_notes.note_memory,
    lambda bot: bot.rewrite.rewrite_query,
    lambda bot: bot.agent.agent_step,
    lambda bot: bot.agent.call_tool,
    lambda bot: bot.agent.call_mcp_tool,
    lambda bot: bot.agent.list_mcp_tools,
)
"""The activities that act for a bot: each runs the version the conversation is pinned to."""


def build_worker(
    client: Client, settings: Settings, *, task_queue: str | None = None, executor: ThreadPoolExecutor
) -> Worker:
    """A worker with every workflow and activity of a turn, wired to the bot and the store in `settings`."""
    turn = build_turn_activities(settings)
    retention_days = turn.own.bot.privacy.retention_days
    return Worker(
        client,
        task_queue=task_queue or settings.task_queue,
        workflows=[ConversationWorkflow, RetentionWorkflow, ResendWorkflow],
        activities=[
            *(dispatched(turn.bots, step) for step in BOT_STEPS),
            turn.retrieve.retrieve,
            turn.record.record_turn,
            turn.record.record_message,
            turn.record.record_conversation,
            RetentionActivities(client, turn.engine, retention_days).purge_expired,
            DeliveryActivities(turn.engine, settings.channels).deliver,
        ],
        activity_executor=executor,
        interceptors=[*worker_interceptors(), BotHeaderInterceptor()],
        workflow_runner=SANDBOX if settings.workflow_sandbox else UnsandboxedWorkflowRunner(),
        # A conversation's next task goes to the worker that ran the last one while it is in cache; if that
        # worker died, Temporal hands the task to another after this long (default 10 s: a lost worker
        # then delayed a redone turn by 10 s, measured in tests/test_faults.py).
        sticky_queue_schedule_to_start_timeout=timedelta(seconds=3),
        max_cached_workflows=settings.worker_cached_workflows,
        # On SIGTERM, let the activities in hand finish (a turn's steps take well under this) instead of
        # cancelling them at once: a rolling deploy then redoes no step.
        graceful_shutdown_timeout=timedelta(seconds=settings.worker_shutdown_grace_seconds),
        # A build of the workflow code when `worker_deployment` is set: conversations stay on their build.
        deployment_config=deployment_config(settings),
    )


async def run_worker(settings: Settings) -> None:
    runtime, sdk_metrics_url = sdk_runtime() if settings.worker_metrics_port else (None, None)
    client = await connect(
        settings,
        interceptors=temporal_interceptors(exported(settings, tracer_provider(settings, "worker"))),
        runtime=runtime,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    with ThreadPoolExecutor(max_workers=16) as executor:
        worker = build_worker(client, settings, executor=executor)
        if load_bot(settings.bot_path).privacy.retention_days is not None:
            every = timedelta(seconds=settings.retention_interval_seconds)
            await ensure_retention_schedule(client, settings.task_queue, every)
        async with worker:
            metrics = None
            if settings.worker_metrics_port:
                metrics = WorkerMetricsServer(
                    settings.worker_metrics_host, settings.worker_metrics_port, sdk_metrics_url
                )
                metrics.start()
            log.info(
                "worker polling task queue %s",
                settings.task_queue,
                extra={
                    "task_queue": settings.task_queue,
                    "temporal": settings.temporal_address,
                    "metrics_port": metrics.port if metrics else None,
                },
            )
            await stop.wait()
            if metrics:
                metrics.stop()
    log.info("worker stopped")


def main() -> None:
    settings = get_settings()
    configure_logging(settings, "worker")
    # uvloop: turn p50 41.4 ms instead of 44.7 with asyncio's own loop (bench/turn_latency.py, two runs).
    uvloop.run(run_worker(settings))


if __name__ == "__main__":
    main()
