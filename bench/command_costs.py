"""What each kind of workflow command costs, side by side on one dev server: updates (8 per workflow,
50 in flight) whose workflow task records a bare update, plus a search-attribute upsert, plus one or two
local activities of a turn-sized result, plus five patch markers on the first update. Reported per
update: the dev server's CPU, this process's (client and worker) CPU, and the rate; the shapes run in
alternation, `--rounds` times, so the machine's drift falls on all of them alike.

    .venv/bin/python -m bench.command_costs [--updates 1600] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from typing import Any

from temporalio.client import Client, WithStartWorkflowOperation
from temporalio.common import WorkflowIDConflictPolicy

from bench.command_shapes import CommandShape, sized
from bench.stack import BUILT_IN_PIPELINE, EmbeddedStack
from bench.streaming import RESULTS, header
from bench.throughput import cpu_seconds, own_cpu, process_tree
from bench.turn_latency import baseline_worker

QUEUE = "bench-command-costs"
IN_FLIGHT = 50
UPDATES_PER_WORKFLOW = 8
SHAPES: dict[str, dict[str, int]] = {
    "bare update": {},
    "+ 1 search-attribute upsert": {"sa": 1},
    "+ 1 local activity": {"la": 1},
    "+ 2 local activities": {"la": 2},
    "+ 2 local activities + 1 upsert (a turn today)": {"la": 2, "sa": 1},
    "+ 1 local activity + 1 upsert": {"la": 1, "sa": 1},
    "+ 5 patches on the first update": {"patches": 5},
}


async def shape_round(client: Client, shape: dict[str, int], updates: int, server: int) -> dict[str, float]:
    gate = asyncio.Semaphore(IN_FLIGHT)
    run_id = uuid.uuid4().hex[:6]

    async def update(number: int) -> None:
        async with gate:
            start = WithStartWorkflowOperation(
                CommandShape.run,
                shape,
                id=f"shape-{run_id}-{number // UPDATES_PER_WORKFLOW}",
                task_queue=QUEUE,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            )
            await client.execute_update_with_start_workflow(
                CommandShape.turn, "hello", start_workflow_operation=start
            )

    # Each workflow's updates go one after the other, as a conversation's turns do.
    async def workflow_updates(first: int) -> None:
        for number in range(first, first + UPDATES_PER_WORKFLOW):
            await update(number)

    server_before, own_before, began = cpu_seconds(server), own_cpu(), time.perf_counter()
    await asyncio.gather(*(workflow_updates(n) for n in range(0, updates, UPDATES_PER_WORKFLOW)))
    elapsed = time.perf_counter() - began
    return {
        "temporal_cpu_ms": 1000 * (cpu_seconds(server) - server_before) / updates,
        "client_worker_cpu_ms": 1000 * (own_cpu() - own_before) / updates,
        "updates_per_second": updates / elapsed,
    }


async def run(updates: int, rounds: int) -> dict[str, Any]:
    stack = EmbeddedStack(**BUILT_IN_PIPELINE)
    await asyncio.to_thread(stack.__enter__)
    try:
        assert stack.pid is not None
        server = next(pid for pid, name in process_tree(stack.pid).items() if name == "temporal")
        client = await stack.temporal_client()
        measured: dict[str, list[dict[str, float]]] = {name: [] for name in SHAPES}
        async with baseline_worker(client, QUEUE, workflows=(CommandShape,), activities=(sized,)):
            await shape_round(client, {}, 200, server)  # warm up
            for _ in range(rounds):
                for name, shape in SHAPES.items():
                    measured[name].append(await shape_round(client, shape, updates, server))
    finally:
        await asyncio.to_thread(stack.__exit__, None, None, None)
    return {
        **header("command_costs"),
        "updates_per_shape_and_round": updates,
        "updates_per_workflow": UPDATES_PER_WORKFLOW,
        "in_flight": IN_FLIGHT,
        "shapes": {
            name: {key: round(statistics.median(r[key] for r in results), 2) for key in results[0]}
            for name, results in measured.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=1600)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    result = asyncio.run(run(args.updates, args.rounds))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "command_costs.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
