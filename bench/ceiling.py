"""Our turns as a fraction of Temporal's own ceiling, on one machine: for each stack (the default bot as
`make run` starts it: trained NLU with embeddings, hybrid retrieval, grounded answers; then the built-in
pipeline), first the rate of bare workflow updates (no activity) one Python client and worker reach
against that stack's dev server, then our turns over HTTP at 50 and at 200 users over new conversations.
Each level reports turns/s, the fraction of the ceiling, p50/p99, failures, and the CPU per turn of
every process. The per-key rate limit is off (one key sends everything); the load shedding keeps its
default.

    .venv/bin/python -m bench.ceiling [--conversations 2000] [--users 50 200] [--updates 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from temporalio.client import Client, WithStartWorkflowOperation
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.worker import Worker

from bench.baselines import BaselineTurn, noop
from bench.stack import BUILT_IN_PIPELINE, EmbeddedStack, default_bot
from bench.streaming import RESULTS, header, percentiles
from bench.throughput import cpu_seconds, level, own_cpu, process_tree
from dialogue.platform.settings import Settings
from dialogue.platform.temporal import connect

CEILING_QUEUE = "bench-ceiling"
CEILING_IN_FLIGHT = 50


async def ceiling(stack: EmbeddedStack, updates: int, processes: dict[int, str]) -> dict[str, Any]:
    """Bare updates (update-with-start, no activity) at CEILING_IN_FLIGHT in flight over `updates` / 2
    workflows, from this process's client to this process's worker, through the stack's dev server; with
    the dev server's CPU per update (the client and worker are this process)."""
    settings = Settings.model_validate(
        {
            "data_dir": Path(stack.env["DIALOGUE_DATA_DIR"]),
            "temporal_address": stack.env["DIALOGUE_TEMPORAL_ADDRESS"],
        }
    )
    client: Client = await connect(settings)  # the encrypted data converter, as the stack's processes use
    gate = asyncio.Semaphore(CEILING_IN_FLIGHT)
    latencies: list[float] = []
    run_id = uuid.uuid4().hex[:6]

    async def update(number: int) -> None:
        async with gate:
            started = time.perf_counter()
            start = WithStartWorkflowOperation(
                BaselineTurn.run,
                0,
                id=f"ceiling-{run_id}-{number // 2}",
                task_queue=CEILING_QUEUE,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            )
            await client.execute_update_with_start_workflow(
                BaselineTurn.turn, "hi", start_workflow_operation=start
            )
            latencies.append((time.perf_counter() - started) * 1000)

    with ThreadPoolExecutor(max_workers=4) as executor:
        async with Worker(
            client,
            task_queue=CEILING_QUEUE,
            workflows=[BaselineTurn],
            activities=[noop],
            activity_executor=executor,
        ):
            await asyncio.gather(*(update(n) for n in range(200)))  # warm up
            latencies.clear()
            server = next(pid for pid, name in processes.items() if name == "temporal")
            server_before, own_before = cpu_seconds(server), own_cpu()
            began = time.perf_counter()
            await asyncio.gather(*(update(n) for n in range(200, 200 + updates)))
            elapsed = time.perf_counter() - began
            server_cpu, own = cpu_seconds(server) - server_before, own_cpu() - own_before
    return {
        "in_flight": CEILING_IN_FLIGHT,
        "updates_per_second": round(updates / elapsed, 1),
        "latency_ms": percentiles(latencies),
        "cpu_ms_per_update": {
            "temporal": round(1000 * server_cpu / updates, 1),
            "client and worker": round(1000 * own / updates, 1),
        },
    }


async def measure(stack: EmbeddedStack, conversations: int, users: list[int], updates: int) -> dict[str, Any]:
    await asyncio.to_thread(stack.__enter__)
    try:
        assert stack.pid is not None
        processes = process_tree(stack.pid)
        top = await ceiling(stack, updates, processes)
        levels = []
        for count in users:
            measured = await level(stack, processes, conversations, 1, count)
            measured["fraction_of_ceiling"] = round(
                measured["turns_per_second"] / top["updates_per_second"], 3
            )
            levels.append(measured)
    finally:
        await asyncio.to_thread(stack.__exit__, None, None, None)
    return {"ceiling": top, "levels": levels}


async def run(conversations: int, users: list[int], updates: int) -> dict[str, Any]:
    default = EmbeddedStack(rate_limit_per_second="0", **default_bot())
    built_in = EmbeddedStack(rate_limit_per_second="0", **BUILT_IN_PIPELINE)
    return {
        **header("ceiling"),
        "conversations_per_level": conversations,
        "default_bot": await measure(default, conversations, users, updates),
        "built_in_pipeline": await measure(built_in, conversations, users, updates),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=2000)
    parser.add_argument("--users", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--updates", type=int, default=3000)
    args = parser.parse_args()
    result = asyncio.run(run(args.conversations, args.users, args.updates))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ceiling.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
