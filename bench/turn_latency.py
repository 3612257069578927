"""Turn latency: sequential turns over real HTTP against `dialogue up`, and in the same run, round by
round, three baselines:

- `pipeline`: the turn's own work with no Temporal: the worker's activities (understand, retrieve,
  generate, record_turn) called in this process one after the other: the floor of the work itself;
- `bare_update`: an update-with-start to a workflow whose update runs no activity, on the stack's
  Temporal: Temporal's floor for a turn;
- `naive`: the same with three regular activities that do nothing: what scheduling three steps costs;

and `steps_in_workflow`, each turn's steps as the workflow timed them (from the first step to the
transcript recorded: the turn's local activities), and `turn_unsandboxed`, the same turns against a second stack whose worker runs workflow code outside
Temporal's sandbox (`DIALOGUE_WORKFLOW_SANDBOX=false`). Both stacks run the issue's target pipeline
(keyword NLU, BM25, the grounded generator: `bench.stack.BUILT_IN_PIPELINE`).

Reports p50/p90/p99 of each, the overhead (turn p50 - pipeline p50) and the ratios; results in
bench/results/turn_latency.json.

    .venv/bin/python -m bench.turn_latency [--rounds 200]
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from temporalio.client import Client, WithStartWorkflowOperation
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.testing import ActivityEnvironment
from temporalio.worker import Worker

from bench.baselines import BaselineTurn, noop
from bench.stack import BUILT_IN_PIPELINE, EmbeddedStack
from bench.streaming import RESULTS, header, percentiles
from dialogue.model.contracts import GenerateRequest, RecordTurnRequest, RetrieveRequest, UnderstandRequest
from dialogue.platform.settings import Settings
from dialogue.platform.temporal import connect
from worker import TurnActivities, build_turn_activities

TEXTS = ["hello", "how much does express shipping cost?", "can I pay with PayPal?", "thanks"]
CONVERSATIONS = 10
"""Turns go round this many conversations, so none reaches a continue-as-new in a default run."""
BASELINE_QUEUE = "bench-baselines"
WARM_UP_ROUNDS = 5


async def timed(call: Awaitable[Any]) -> float:
    """Milliseconds `call` takes (a coroutine does nothing until awaited: it is timed from its start)."""
    started = time.perf_counter()
    await call
    return (time.perf_counter() - started) * 1000


async def _run(env: ActivityEnvironment, function: Callable[..., Any], request: Any) -> Any:
    result = env.run(function, request)
    return await result if inspect.isawaitable(result) else result


async def pipeline_turn(env: ActivityEnvironment, acts: TurnActivities, text: str, index: int) -> None:
    """One turn's work as the workflow orders it, without Temporal."""
    understood = await _run(env, acts.understand.understand, UnderstandRequest(text=text))
    retrieved = await _run(env, acts.retrieve.retrieve, RetrieveRequest(text=text))
    reply = await _run(
        env,
        acts.generate.generate,
        GenerateRequest(
            text=text,
            turn_index=index,
            nlu=understood.nlu,
            passages=retrieved.passages,
            decision=understood.decision,
        ),
    )
    record = RecordTurnRequest(
        conversation_id="default/bench-pipeline",
        turn_id=f"pipeline-{index}",
        turn_index=index,
        user_text=text,
        reply=reply,
        nlu=understood.nlu,
        at=datetime.now(UTC),
    )
    await _run(env, acts.record.record_turn, record)


async def baseline_turn(
    client: Client, steps: int, key: str, text: str, task_queue: str = BASELINE_QUEUE
) -> None:
    """A turn of `steps` no-op regular activities (0: a bare update), on the baseline worker of `task_queue`."""
    start = WithStartWorkflowOperation(
        BaselineTurn.run,
        steps,
        id=key,
        task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )
    await client.execute_update_with_start_workflow(BaselineTurn.turn, text, start_workflow_operation=start)


@asynccontextmanager
async def baseline_worker(
    client: Client,
    task_queue: str = BASELINE_QUEUE,
    workflows: Sequence[type] = (BaselineTurn,),
    activities: Sequence[Callable[..., Any]] = (noop,),
) -> AsyncIterator[Worker]:
    """This process's worker for the baseline turns (or other `workflows`) of `task_queue`."""
    with ThreadPoolExecutor(max_workers=4) as executor:
        async with Worker(
            client,
            task_queue=task_queue,
            workflows=list(workflows),
            activities=list(activities),
            activity_executor=executor,
        ) as worker:
            yield worker


async def run(rounds: int) -> dict[str, Any]:
    stack = EmbeddedStack(**BUILT_IN_PIPELINE)
    # The same stack with the workflow sandbox off: a lever measured turn by turn beside the default.
    unsandboxed = EmbeddedStack(workflow_sandbox="false", **BUILT_IN_PIPELINE)
    await asyncio.gather(asyncio.to_thread(stack.__enter__), asyncio.to_thread(unsandboxed.__enter__))
    try:
        env = stack.env
        settings = Settings.model_validate(
            {
                "data_dir": Path(env["DIALOGUE_DATA_DIR"]),
                "temporal_address": env["DIALOGUE_TEMPORAL_ADDRESS"],
                "api_key": stack.key,
                **BUILT_IN_PIPELINE,
            }
        )
        acts = build_turn_activities(settings)
        activity_env = ActivityEnvironment()
        client = await connect(settings)  # the encrypted data converter, as the API and worker use
        run_id = uuid.uuid4().hex[:6]
        series: dict[str, list[float]] = {
            "turn": [],
            "turn_unsandboxed": [],
            "pipeline": [],
            "bare_update": [],
            "naive": [],
        }
        async with (
            baseline_worker(client),
            httpx.AsyncClient(base_url=stack.api, headers=stack.headers, timeout=60) as http,
            httpx.AsyncClient(
                base_url=unsandboxed.api, headers=unsandboxed.headers, timeout=60
            ) as http_unsandboxed,
        ):
            steps: list[float] = []
            """The default stack's turns as the workflow timed them: first step started to recorded."""

            async def http_turn(conversation: str, text: str, on: httpx.AsyncClient = http) -> None:
                reply = await on.post(f"/v1/conversations/{conversation}/turns", json={"text": text})
                reply.raise_for_status()
                if on is http:
                    steps.append(reply.json()["timings_ms"]["total"])

            for index in range(WARM_UP_ROUNDS + rounds):
                text = TEXTS[index % len(TEXTS)]
                conversation = f"{run_id}-{index % CONVERSATIONS}"
                measured = {
                    "turn": await timed(http_turn(f"bench-{conversation}", text)),
                    "turn_unsandboxed": await timed(
                        http_turn(f"bench-{conversation}", text, http_unsandboxed)
                    ),
                    "pipeline": await timed(pipeline_turn(activity_env, acts, text, index)),
                    "bare_update": await timed(baseline_turn(client, 0, f"bare-{conversation}", text)),
                    "naive": await timed(baseline_turn(client, 3, f"naive-{conversation}", text)),
                }
                if index >= WARM_UP_ROUNDS:
                    for name, ms in measured.items():
                        series[name].append(ms)
            for k in range(CONVERSATIONS):
                for prefix in ("bare", "naive"):
                    await client.get_workflow_handle(f"{prefix}-{run_id}-{k}").signal("end")
    finally:
        await asyncio.gather(
            asyncio.to_thread(stack.__exit__, None, None, None),
            asyncio.to_thread(unsandboxed.__exit__, None, None, None),
        )
    series["steps_in_workflow"] = steps[WARM_UP_ROUNDS:]
    stats = {name: percentiles(values) for name, values in series.items()}
    turn, pipeline, bare = (stats[name]["p50"] for name in ("turn", "pipeline", "bare_update"))
    return {
        **header("turn_latency", pipeline=BUILT_IN_PIPELINE),
        "rounds": rounds,
        "texts": TEXTS,
        "ms": stats,
        "overhead_p50_ms": round(turn - pipeline, 1),
        "turn_over_bare_plus_pipeline": round(turn / (bare + pipeline), 2),
        "unsandboxed_overhead_p50_ms": round(stats["turn_unsandboxed"]["p50"] - pipeline, 1),
        "unsandboxed_over_bare_plus_pipeline": round(stats["turn_unsandboxed"]["p50"] / (bare + pipeline), 2),
        "naive_over_bare": round(stats["naive"]["p50"] / bare, 2),
        "turn_over_naive": round(turn / stats["naive"]["p50"], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    result = asyncio.run(run(args.rounds))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "turn_latency.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
