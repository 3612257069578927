"""Open conversations: the memory of each process of `dialogue up` (Temporal, worker, API) while many
conversations are open, each a running workflow waiting for its next turn; and whether old ones,
long out of the worker's cache, still answer.

Opens `--conversations` conversations, each by one turn over real HTTP, at most `--concurrency` turns
in flight (lexical NLU, BM25 retrieval, the grounded generator). Resident memory (VmRSS) of each
process is read after one warm-up turn and again after all are open and `--idle` seconds of quiet,
with each process's peak (VmHWM). Then `--old` conversations drawn from the first 10% opened get a
second turn, one at a time: each should answer 200 with `turn_index` 1, its workflow replayed from
history when the worker has evicted it. The target is 10,000 open conversations with the worker at
500 MB or less. Results in bench/results/open_conversations.json.

    .venv/bin/python -m bench.open_conversations [--conversations 10000] [--concurrency 50] [--out PATH]
        [--default-bot]   (the bot as `make run` starts it; target 600 MB)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from bench.stack import BUILT_IN_PIPELINE, EmbeddedStack, default_bot
from bench.streaming import RESULTS, header, percentiles
from bench.throughput import post_turn, process_tree, send_load

TARGET_WORKER_MB = 500
DEFAULT_BOT_TARGET_WORKER_MB = 600
"""Issue 19's target for the default bot (it also holds the embedding model and the trained NLU)."""
TURN_TIMEOUT = 60
SEED = 20


def memory_mb(pid: int) -> dict[str, float]:
    """Resident memory (VmRSS) and its peak so far (VmHWM) of a process, in MB."""
    fields = dict(
        line.split(":", 1)
        for line in (Path("/proc") / str(pid) / "status").read_text().splitlines()
        if ":" in line
    )
    return {
        name: round(int(fields[field].split()[0]) / 1024, 1)
        for name, field in (("rss", "VmRSS"), ("peak", "VmHWM"))
    }


def memory(processes: dict[int, str]) -> dict[str, dict[str, float]]:
    return {name: memory_mb(pid) for pid, name in processes.items()}


async def run(
    conversations: int, concurrency: int, idle: float, old: int, pipeline: dict[str, str], target: float
) -> dict[str, Any]:
    # One client key sends every conversation's turns here: its rate limit would measure itself.
    stack = EmbeddedStack(rate_limit_per_second="0", **pipeline)
    await asyncio.to_thread(stack.__enter__)
    try:
        assert stack.pid is not None
        processes = process_tree(stack.pid)
        run_id = uuid.uuid4().hex[:6]
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(
            base_url=stack.api, headers=stack.headers, timeout=TURN_TIMEOUT, limits=limits
        ) as http:
            await http.post(f"/v1/conversations/warm-{run_id}/turns", json={"text": "hello"})
            before = memory(processes)

            began = time.perf_counter()
            latencies, failures = await send_load(http, conversations, 1, concurrency, run_id)
            elapsed = time.perf_counter() - began
            await asyncio.sleep(idle)
            after = memory(processes)

            # Old conversations, one at a time: a second turn each, after everything opened since.
            oldest = range(max(1, conversations // 10))
            picked = random.Random(SEED).sample(oldest, min(old, len(oldest)))
            old_latencies: list[float] = []
            old_outcomes: dict[str, int] = {}
            for number in picked:
                outcome, ms, reply = await post_turn(http, f"{run_id}-{number}", "thanks")
                if reply is not None and outcome == "200":
                    old_latencies.append(ms)
                    if (index := reply.json().get("turn_index")) != 1:
                        outcome = f"200 with turn_index {index}"
                old_outcomes[outcome] = old_outcomes.get(outcome, 0) + 1
    finally:
        await asyncio.to_thread(stack.__exit__, None, None, None)
    worker_mb = after.get("worker", {}).get("rss", 0.0)
    return {
        **header("open_conversations", pipeline=pipeline or "the default bot"),
        "conversations": conversations,
        "concurrency": concurrency,
        "opened": len(latencies),
        "seconds": round(elapsed, 1),
        "turns_per_second": round(len(latencies) / elapsed, 1),
        "opening_latency_ms": percentiles(latencies) if len(latencies) >= 2 else {"n": len(latencies)},
        "failures": failures,
        "idle_seconds": idle,
        "memory_mb_before": before,
        "memory_mb_after": after,
        "rss_growth_mb": {name: round(after[name]["rss"] - before[name]["rss"], 1) for name in after},
        "worker_rss_mb": worker_mb,
        "target_worker_rss_mb": target,
        "meets_target": 0 < worker_mb <= target,
        "old_conversations": {
            "drawn_from_first": len(oldest),
            "sent": len(picked),
            "answered_turn_index_1": old_outcomes.get("200", 0),
            "outcomes": old_outcomes,
            "latency_ms": percentiles(old_latencies)
            if len(old_latencies) >= 2
            else {"n": len(old_latencies)},
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=10000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--idle", type=float, default=5.0, help="seconds of quiet before reading memory")
    parser.add_argument("--old", type=int, default=20, help="old conversations sent a second turn")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--default-bot", action="store_true", help="the default bot, not the built-in pipeline"
    )
    args = parser.parse_args()
    pipeline, target = (
        (default_bot(), DEFAULT_BOT_TARGET_WORKER_MB)
        if args.default_bot
        else (BUILT_IN_PIPELINE, TARGET_WORKER_MB)
    )
    result = asyncio.run(run(args.conversations, args.concurrency, args.idle, args.old, pipeline, target))
    name = "open_conversations-default-bot.json" if args.default_bot else "open_conversations.json"
    args.out = args.out or RESULTS / name
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
