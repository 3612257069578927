"""Throughput: many conversations sending turns at once over real HTTP against `dialogue up`; sustained
turns per second, latency percentiles at that rate, and the CPU each process of the stack used.

An asyncio load generator on loopback: `--conversations` conversations, each sending `--turns` turns
one after the other, at most `--concurrency` turns in flight across all of them (a bound, so the
queue never outgrows the API's reply wait). Each `--concurrency` level is run in turn on the same stack:
50 in flight finds the rate the stack sustains (latency is then mostly queueing), 4 the latency at a
lower rate. Results in bench/results/throughput.json.

    .venv/bin/python -m bench.throughput [--conversations 500] [--turns 2] [--concurrency 50 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from bench.stack import BUILT_IN_PIPELINE, EmbeddedStack
from bench.streaming import RESULTS, header, percentiles
from bench.turn_latency import TEXTS
from dialogue.apps.client import AsyncDialogueClient, DialogueError

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
RETRY_FOR_SECONDS = 120.0
"""How long a user keeps sending a turn again (shed, limited, or answered 504) before giving up."""


def process_tree(root: int) -> dict[int, str]:
    """The processes below `root` (the stack's children: Temporal, worker, API), by pid, with a short name."""
    parents: dict[int, int] = {}
    names: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
        names[int(entry.name)] = _role(command)
    tree: dict[int, str] = {}
    for pid in sorted(pid for pid, parent in parents.items() if parent == root):
        name = names[pid]
        same = sum(1 for other in tree.values() if other.split(" #")[0] == name)
        tree[pid] = f"{name} #{same + 1}" if same else name  # two workers: "worker", "worker #2"
    return tree


def _role(command: str) -> str:
    if "temporal" in command and "server" in command:
        return "temporal"
    if "-m worker" in command:
        return "worker"
    if "dialogue api" in command:
        return "api"
    return command[:40]


def cpu_seconds(pid: int) -> float:
    fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def machine_cpu() -> float:
    """The CPU seconds every process of this machine used since it booted."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq = (int(field) for field in fields[:7])
    return (user + nice + system + irq + softirq) / CLOCK_TICKS


class CpuMeter:
    """The CPU seconds each of `processes` (the stack's) and this one (the load generator) used since the
    meter was made, and the rest of the machine."""

    def __init__(self, processes: dict[int, str]) -> None:
        self.processes = processes
        self.began = time.perf_counter()
        self.before = {pid: cpu_seconds(pid) for pid in processes}
        self.own_before = own_cpu()
        self.machine_before = machine_cpu()

    def used(self) -> dict[str, float]:
        cpu = {name: cpu_seconds(pid) - self.before[pid] for pid, name in self.processes.items()}
        cpu["load generator"] = own_cpu() - self.own_before
        return cpu

    def others_cores_busy(self) -> float:
        """The cores other work on the machine kept busy meanwhile, on average. It shares this 2-core
        machine's cores with the measurement: near 0 the numbers are the stack's own; at 0.5 or more they
        are slower and cost more CPU (busy cores run each other's work slower), and a ratio to a part
        measured in quieter minutes is skewed."""
        others = machine_cpu() - self.machine_before - sum(self.used().values())
        return round(max(0.0, others) / (time.perf_counter() - self.began), 2)


def load_client(stack: EmbeddedStack, concurrency: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    return httpx.AsyncClient(base_url=stack.api, headers=stack.headers, timeout=60, limits=limits)


async def post_turn(
    http: httpx.AsyncClient, conversation: str, text: str, key: str | None = None
) -> tuple[str, float, httpx.Response | None]:
    """One turn (with `key` as its idempotency key, if given): its outcome (the HTTP status, or the error's
    name), its latency (ms) and the response."""
    started = time.perf_counter()
    headers = {"Idempotency-Key": key} if key else None
    try:
        reply = await http.post(
            f"/v1/conversations/{conversation}/turns", json={"text": text}, headers=headers
        )
    except httpx.HTTPError as err:
        return type(err).__name__, (time.perf_counter() - started) * 1000, None
    return str(reply.status_code), (time.perf_counter() - started) * 1000, reply


async def send_load(
    http: httpx.AsyncClient, conversations: int, turns: int, concurrency: int, run_id: str | None = None
) -> tuple[list[float], dict[str, int]]:
    """`conversations` new conversations (`{run_id}-{number}`) of `turns` turns each, at most `concurrency`
    turns in flight: the latency of each answered turn (ms), and the failures by HTTP status or error."""
    run_id = run_id or uuid.uuid4().hex[:6]
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    failures: dict[str, int] = {}
    # Well-behaved users: shed (503) or limited (429), a turn is sent again after Retry-After with its
    # key, and a 504 collects the reply of the turn still running; a turn's latency runs from its first try.
    dialogue = AsyncDialogueClient.wrapping(http, retry_for=RETRY_FOR_SECONDS)

    async def converse(number: int) -> None:
        for index in range(turns):
            async with gate:
                text = TEXTS[(number + index) % len(TEXTS)]
                started = time.perf_counter()
                try:
                    await dialogue.send_turn(
                        f"{run_id}-{number}", text, idempotency_key=f"{run_id}-{number}-{index}"
                    )
                except DialogueError as err:
                    failures[str(err.status or err.code)] = failures.get(str(err.status or err.code), 0) + 1
                else:
                    latencies.append((time.perf_counter() - started) * 1000)

    await asyncio.gather(*(converse(n) for n in range(conversations)))
    for status, count in dialogue.resent.items():
        failures[f"{status or 'unreachable'}, sent again"] = count
    return latencies, failures


async def level(
    stack: EmbeddedStack, processes: dict[int, str], conversations: int, turns: int, concurrency: int
) -> dict[str, Any]:
    """The load at one concurrency: turns/s, latency percentiles at that rate, CPU of each process."""
    async with load_client(stack, concurrency) as http:
        await http.post("/v1/conversations/warm-up/turns", json={"text": "hello"})
        meter = CpuMeter(processes)
        began = time.perf_counter()
        latencies, failures = await send_load(http, conversations, turns, concurrency)
        elapsed = time.perf_counter() - began
        cpu = {name: round(seconds, 1) for name, seconds in meter.used().items()}
    return {
        "concurrency": concurrency,
        "seconds": round(elapsed, 1),
        "turns_per_second": round(len(latencies) / elapsed, 1),
        "latency_ms": percentiles(latencies),
        "failures": failures,
        "cpu_seconds": cpu,
        "cpu_ms_per_turn": {name: round(1000 * s / max(len(latencies), 1), 1) for name, s in cpu.items()},
        "cpu_cores_busy": round(sum(cpu.values()) / elapsed, 2),
    }


async def run(conversations: int, turns: int, concurrencies: list[int]) -> dict[str, Any]:
    # One client key sends every conversation's turns here: its rate limit would measure itself.
    stack = EmbeddedStack(rate_limit_per_second="0", **BUILT_IN_PIPELINE)
    await asyncio.to_thread(stack.__enter__)
    try:
        assert stack.pid is not None
        processes = process_tree(stack.pid)
        # One stack, each level with new conversations: the levels are compared side by side.
        levels = [await level(stack, processes, conversations, turns, c) for c in concurrencies]
    finally:
        await asyncio.to_thread(stack.__exit__, None, None, None)
    return {
        **header("throughput", pipeline=BUILT_IN_PIPELINE),
        "conversations": conversations,
        "turns_per_conversation": turns,
        "levels": levels,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=500)
    parser.add_argument("--turns", type=int, default=2)
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=[50, 4], help="turns in flight at most, one run each"
    )
    args = parser.parse_args()
    result = asyncio.run(run(args.conversations, args.turns, args.concurrency))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
