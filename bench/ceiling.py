"""Our turns as a fraction of Temporal's own ceiling, on one machine: for each stack (the default bot as
`make run` starts it: trained NLU with embeddings, hybrid retrieval, grounded answers; then the built-in
pipeline), first the rate of bare workflow updates (no activity; two per workflow, one after the other,
as a conversation's turns come) one Python client and worker reach against that stack's dev server, then
our turns over HTTP at 50 and at 200 users over new conversations. Each level reports turns/s, the
fraction of the ceiling, p50/p99, failures, and the CPU per turn of every process. The per-key rate
limit is off (one key sends everything); the load shedding keeps its default.

    .venv/bin/python -m bench.ceiling [--conversations 2000] [--users 50 200] [--updates 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from typing import Any

from bench.stack import BUILT_IN_PIPELINE, EmbeddedStack, default_bot
from bench.streaming import RESULTS, header, percentiles
from bench.throughput import cpu_seconds, level, own_cpu, process_tree
from bench.turn_latency import baseline_turn, baseline_worker

CEILING_QUEUE = "bench-ceiling"
CEILING_IN_FLIGHT = 50


async def ceiling(
    stack: EmbeddedStack, updates: int, processes: dict[int, str], per_workflow: int = 2
) -> dict[str, Any]:
    """Bare updates (update-with-start, no activity) from CEILING_IN_FLIGHT users of this process's client
    to this process's worker, through the stack's dev server: each user sends workflows `per_workflow`
    updates one after the other (as a conversation takes its turns), then goes on to a new workflow, for
    `updates` in all; with the dev server's CPU per update (the client and worker are this process)."""
    client = await stack.temporal_client()
    latencies: list[float] = []

    async def user(first: int, workflows: int, prefix: str) -> None:
        for workflow in range(first, workflows, CEILING_IN_FLIGHT):
            for _ in range(per_workflow):
                started = time.perf_counter()
                await baseline_turn(client, 0, f"{prefix}-{workflow}", "hi", CEILING_QUEUE)
                latencies.append((time.perf_counter() - started) * 1000)

    async def load(workflows: int) -> None:
        prefix = f"ceiling-{uuid.uuid4().hex[:6]}"
        await asyncio.gather(*(user(first, workflows, prefix) for first in range(CEILING_IN_FLIGHT)))

    async with baseline_worker(client, CEILING_QUEUE):
        await load(max(CEILING_IN_FLIGHT, 200 // per_workflow))  # warm up
        latencies.clear()
        server = next(pid for pid, name in processes.items() if name == "temporal")
        server_before, own_before = cpu_seconds(server), own_cpu()
        began = time.perf_counter()
        await load(updates // per_workflow)
        elapsed = time.perf_counter() - began
        server_cpu, own = cpu_seconds(server) - server_before, own_cpu() - own_before
    sent = len(latencies)
    return {
        "in_flight": CEILING_IN_FLIGHT,
        "updates_per_workflow": per_workflow,
        "updates_per_second": round(sent / elapsed, 1),
        "latency_ms": percentiles(latencies),
        "cpu_ms_per_update": {
            "temporal": round(1000 * server_cpu / sent, 1),
            "client and worker": round(1000 * own / sent, 1),
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
