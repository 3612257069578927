"""Long conversation: one conversation of `--turns` turns sent one after the other over real HTTP against
`dialogue up` (lexical NLU, BM25 retrieval, the grounded generator); does a turn late in a long
conversation cost what a turn early in it costs, and how large is the history of each workflow run?

Turn latency is compared over two windows of `width` = min(100, turns // 10) turns (0-based turn
indexes): the early one is [width // 10, width), skipping the conversation's first turns (the
workflow's start, first imports and caches), and the late one is the last `width` turns. With the
default 3,000 turns these are turns 10-100 and 2,900-3,000; with 300, turns 3-30 and 270-300. The
target is late p50 / early p50 <= 1.2. The workflow continues as new every `--turns-per-run` turns:
each run's history (read through the encrypted client, as the worker sees it) is reported by its
events and its bytes, the size of the history as Temporal sends it (the `History` protobuf). Results
in bench/results/long_conversation.json.

    .venv/bin/python -m bench.long_conversation [--turns 3000] [--turns-per-run 200] [--out PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import History
from temporalio.client import Client, WorkflowHistory

from bench.stack import BUILT_IN_PIPELINE, EmbeddedStack
from bench.streaming import RESULTS, header, percentiles
from bench.throughput import post_turn
from bench.turn_latency import TEXTS
from dialogue.platform.settings import Settings
from dialogue.platform.temporal import connect, conversation_key, workflow_id
from dialogue.security.identity import DEFAULT_TENANT
from workflows.replay import load_runs

TARGET_RATIO = 1.2
TURN_TIMEOUT = 60


def windows(turns: int) -> tuple[range, range]:
    """The early and late windows of turn indexes (see the module's docstring)."""
    width = min(100, turns // 10)
    return range(width // 10, width), range(turns - width, turns)


def summary(values: list[float]) -> dict[str, float]:
    """`percentiles`, or what one value or none gives (short runs, failed turns)."""
    if len(values) >= 2:
        return percentiles(values)
    return {"p50": round(values[0], 1), "max": round(values[0], 1), "n": 1} if values else {"n": 0}


async def run_size(client: Client, history: WorkflowHistory) -> dict[str, Any]:
    """One run's history: its events, its bytes (the serialized `History` protobuf), the size the
    server counts against its limits (`history_size_bytes`) and the turns (updates) the run took."""
    described = await client.get_workflow_handle(history.workflow_id, run_id=history.run_id).describe()
    turns = sum(
        event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED
        for event in history.events
    )
    return {
        "run_id": history.run_id,
        "events": len(history.events),
        "bytes": History(events=history.events).ByteSize(),
        "server_bytes": described.raw_description.workflow_execution_info.history_size_bytes,
        "updates": turns,
    }


async def run(turns: int, turns_per_run: int) -> dict[str, Any]:
    # One client key sends every turn: its rate limit would measure itself.
    stack = EmbeddedStack(rate_limit_per_second="0", turns_per_run=str(turns_per_run), **BUILT_IN_PIPELINE)
    await asyncio.to_thread(stack.__enter__)
    try:
        run_id = uuid.uuid4().hex[:6]
        conversation = f"long-{run_id}"
        latencies: list[float | None] = []
        failures: dict[str, int] = {}
        async with httpx.AsyncClient(base_url=stack.api, headers=stack.headers, timeout=TURN_TIMEOUT) as http:
            await http.post(f"/v1/conversations/warm-{run_id}/turns", json={"text": "hello"})
            began = time.perf_counter()
            for index in range(turns):
                outcome, took, _ = await post_turn(http, conversation, TEXTS[index % len(TEXTS)])
                if outcome == "200":
                    latencies.append(took)
                else:
                    latencies.append(None)
                    failures[outcome] = failures.get(outcome, 0) + 1
            elapsed = time.perf_counter() - began
        env = stack.env
        settings = Settings(
            data_dir=Path(env["DIALOGUE_DATA_DIR"]),
            temporal_address=env["DIALOGUE_TEMPORAL_ADDRESS"],
            api_key=stack.key,
        )
        client = await connect(settings)  # the encrypted data converter, as the API and worker use
        key = conversation_key(DEFAULT_TENANT, conversation)  # the bootstrap key's tenant
        runs = [await run_size(client, history) for history in await load_runs(key, client)]
    finally:
        await asyncio.to_thread(stack.__exit__, None, None, None)
    early, late = windows(turns)
    early_ms = summary([ms for i in early if (ms := latencies[i]) is not None])
    late_ms = summary([ms for i in late if (ms := latencies[i]) is not None])
    ratio = round(late_ms["p50"] / early_ms["p50"], 2) if "p50" in early_ms and "p50" in late_ms else None
    # The first turn of each run after the first: the one a continue-as-new happened just before.
    firsts = [ms for i in range(turns_per_run, turns, turns_per_run) if (ms := latencies[i]) is not None]
    return {
        **header("long_conversation", pipeline=BUILT_IN_PIPELINE),
        "turns": turns,
        "turns_per_run": turns_per_run,
        "workflow_id": workflow_id(key),
        "seconds": round(elapsed, 1),
        "turns_per_second": round(sum(ms is not None for ms in latencies) / elapsed, 1),
        "early_window": [early.start, early.stop],
        "late_window": [late.start, late.stop],
        "early_ms": early_ms,
        "late_ms": late_ms,
        "late_over_early_p50": ratio,
        "target_late_over_early_p50": TARGET_RATIO,
        "meets_target": ratio is not None and ratio <= TARGET_RATIO,
        "all_turns_ms": summary([ms for ms in latencies if ms is not None]),
        "first_turn_of_run_ms": summary(firsts),
        "failures": failures,
        "runs": runs,
        "run_count": len(runs),
        "max_run_events": max((r["events"] for r in runs), default=0),
        "max_run_bytes": max((r["bytes"] for r in runs), default=0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=3000)
    parser.add_argument("--turns-per-run", type=int, default=Settings.model_fields["turns_per_run"].default)
    parser.add_argument("--out", type=Path, default=RESULTS / "long_conversation.json")
    args = parser.parse_args()
    if args.turns < 20:
        parser.error("--turns must be at least 20 (two windows of two turns or more)")
    result = asyncio.run(run(args.turns, args.turns_per_run))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
