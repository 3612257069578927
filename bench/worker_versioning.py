"""How long a routing change of Worker Versioning takes to reach new conversations: from the moment
`dialogue build current`, `ramp` or `rollback` returns until a workflow started then lands on the build
it names. Two builds of a one-update workflow poll one task queue on the dev server (`dialogue build`
changes routing the same way whatever the workflow); each change is made `--rounds` times.

    .venv/bin/python -m bench.worker_versioning [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from temporalio import workflow
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from bench.streaming import RESULTS, header
from dialogue.platform import worker_builds
from dialogue.platform.settings import Settings


@workflow.defn
class Landing:
    """Runs until told to stop; its first task says which build it started on."""

    def __init__(self) -> None:
        self._done = False

    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: self._done)

    @workflow.signal
    def done(self) -> None:
        self._done = True


async def lands_on(client: Client, task_queue: str) -> str:
    """Start a workflow and return the build its first task ran on."""
    handle = await client.start_workflow(Landing.run, id=f"land-{uuid.uuid4().hex}", task_queue=task_queue)
    while True:
        versioning = (await handle.describe()).raw_description.workflow_execution_info.versioning_info
        if versioning.deployment_version.build_id:
            await handle.signal(Landing.done)
            return versioning.deployment_version.build_id
        await asyncio.sleep(0.01)


async def until_lands(
    client: Client, task_queue: str, build: str, change: Callable[[], Awaitable[Any]]
) -> dict[str, float]:
    started = time.monotonic()
    await change()
    returned = time.monotonic()
    tries = 0
    while await lands_on(client, task_queue) != build:
        tries += 1
    return {"call_s": returned - started, "effect_s": time.monotonic() - returned, "misrouted": tries}


async def run(rounds: int) -> dict[str, Any]:
    env = await WorkflowEnvironment.start_local(dev_server_existing_path=str(Settings().temporal_binary))
    client, task_queue, deployment = env.client, f"bench-{uuid.uuid4().hex[:6]}", "bench"

    def worker(build: str) -> Worker:
        settings = Settings(worker_deployment=deployment, worker_build_id=build)
        return Worker(
            client,
            task_queue=task_queue,
            workflows=[Landing],
            workflow_runner=UnsandboxedWorkflowRunner(),  # a bench's workflow beside its imports
            deployment_config=worker_builds.deployment_config(settings),
        )

    timings: dict[str, list[dict[str, float]]] = {"current": [], "ramp 100%": [], "rollback": []}
    try:
        async with worker("a"), worker("b"):
            await worker_builds.make_current_when_polled(client, deployment, "a", within=30)
            await worker_builds.make_current_when_polled(client, deployment, "b", within=30)
            await worker_builds.make_current(client, deployment, "a")
            for _ in range(rounds):
                timings["ramp 100%"].append(
                    await until_lands(
                        client, task_queue, "b", lambda: worker_builds.ramp(client, deployment, "b", 100)
                    )
                )
                timings["rollback"].append(  # of the ramp: back to a
                    await until_lands(
                        client, task_queue, "a", lambda: worker_builds.rollback(client, deployment)
                    )
                )
                timings["current"].append(
                    await until_lands(
                        client, task_queue, "b", lambda: worker_builds.make_current(client, deployment, "b")
                    )
                )
                timings["rollback"].append(  # of the current: back to a
                    await until_lands(
                        client, task_queue, "a", lambda: worker_builds.rollback(client, deployment)
                    )
                )
    finally:
        await env.shutdown()
    return {
        change: {
            "n": len(runs),
            "call_ms_median": round(1000 * statistics.median(r["call_s"] for r in runs), 1),
            "effect_ms_median": round(1000 * statistics.median(r["effect_s"] for r in runs), 1),
            "effect_ms_max": round(1000 * max(r["effect_s"] for r in runs), 1),
            "misrouted_new_workflows_max": max(r["misrouted"] for r in runs),
        }
        for change, runs in timings.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    rounds = parser.parse_args().rounds
    result = header("worker_versioning", rounds=rounds) | {"changes": asyncio.run(run(rounds))}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "worker_versioning.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
