"""Throughput levers side by side in one run: the default bot as `make run` starts it, under the same load
(`--users` in flight over `--conversations` new conversations, one turn each, as bench/ceiling.py), with
the workflow sandbox on and off, and one or two worker processes sharing the task queue. Each stack's own bare-update ceiling is measured first, so every variant is reported as a fraction of
the ceiling on the stack that served it (the machine is shared and noisy: the ratio is what compares).

    .venv/bin/python -m bench.levers [--conversations 1000] [--users 50] [--updates 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from bench.ceiling import measure
from bench.stack import EmbeddedStack, default_bot
from bench.streaming import RESULTS, header

VARIANTS: dict[str, dict[str, str]] = {
    "sandbox on, 1 worker process (the defaults until issue 19)": {
        "workflow_sandbox": "true",
        "worker_processes": "1",
    },
    "sandbox off, 1 worker process": {"workflow_sandbox": "false", "worker_processes": "1"},
    "sandbox on, 2 worker processes": {"workflow_sandbox": "true", "worker_processes": "2"},
    "sandbox off, 2 worker processes (the defaults on 2 cores)": {
        "workflow_sandbox": "false",
        "worker_processes": "2",
    },
}


async def run(conversations: int, users: int, updates: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name, settings in VARIANTS.items():
        stack = EmbeddedStack(rate_limit_per_second="0", **default_bot(), **settings)
        measured = await measure(stack, conversations, [users], updates)
        (turns,) = measured["levels"]
        results[name] = {
            "settings": settings,
            "ceiling_updates_per_second": measured["ceiling"]["updates_per_second"],
            "turns_per_second": turns["turns_per_second"],
            "fraction_of_ceiling": turns["fraction_of_ceiling"],
            "latency_ms": turns["latency_ms"],
            "failures": turns["failures"],
            "cpu_ms_per_turn": turns["cpu_ms_per_turn"],
            "cpu_cores_busy": turns["cpu_cores_busy"],
        }
        print(name, json.dumps(results[name]), flush=True)
    return {**header("levers"), "users": users, "conversations": conversations, "variants": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=1000)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--updates", type=int, default=2000)
    args = parser.parse_args()
    result = asyncio.run(run(args.conversations, args.users, args.updates))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "levers.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
