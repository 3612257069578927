"""Overload: twice the load the stack sustains, with load shedding and without, side by side in one run.

For each stack (the default bot as `make run` starts it; then the same with shedding off,
`DIALOGUE_MAX_TURNS_IN_FLIGHT=0`), first the peak: the turns/s it sustains at `--users` users in a closed
loop. Then an open loop: new turns arrive at twice that rate for `--seconds`, each from a well-behaved
client that, refused with 503/429, waits as `Retry-After` says and sends the same turn again (same
idempotency key) up to `--retries` times before it gives up. Reported: goodput (turns answered per second
while the overload lasts, and as a fraction of the peak), the latency of answered turns from their first attempt, turns
answered past the turn deadline or not at all (timeouts, 504), how long the attempt that was admitted
took, and how fast a refusal came back (to the client, and in the API's own timing).

    .venv/bin/python -m bench.overload [--users 50] [--conversations 1000] [--seconds 30] [--retries 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from bench.stack import EmbeddedStack, default_bot
from bench.streaming import RESULTS, header, percentiles
from bench.throughput import CpuMeter, level, process_tree
from bench.turn_latency import TEXTS

WARM_UP_SECONDS = 5.0
TURN_DEADLINE_SECONDS = 20.0
"""The stack's default turn deadline: an answer later than this from the first attempt waited too long."""


@dataclass
class Tally:
    """The turns of a load as `send_turn` counts them: the answered ones (latency from the first attempt,
    ms; when, in seconds from `began`; the admitted attempt's own latency), each refusal's latency, the
    turns past the deadline or unanswered, and each turn's outcome (its last HTTP status, or the error)."""

    began: float = field(default_factory=time.perf_counter)
    answered: list[float] = field(default_factory=list)
    answered_at: list[float] = field(default_factory=list)
    admitted: list[float] = field(default_factory=list)
    refusals: list[float] = field(default_factory=list)
    late: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)


def session(stack: EmbeddedStack) -> aiohttp.ClientSession:
    """A client of the stack's API on aiohttp, not httpx: the load generator shares the stack's cores, and
    httpx cost it twice the API's CPU here."""
    connector = aiohttp.TCPConnector(limit=2000)
    timeout = aiohttp.ClientTimeout(total=60)
    return aiohttp.ClientSession(stack.api, headers=stack.headers, connector=connector, timeout=timeout)


async def send_turn(
    http: aiohttp.ClientSession, tally: Tally, conversation: str, text: str, key: str, retries: int
) -> dict[str, Any] | None:
    """One turn of `conversation` with `key` as its idempotency key, refused (503, 429) sent again as
    `Retry-After` says up to `retries` times, counted in `tally`: the reply when it was answered."""
    started = time.perf_counter()
    for attempt in range(retries + 1):
        sent = time.perf_counter()
        try:
            async with http.post(
                f"/v1/conversations/{conversation}/turns",
                json={"text": text},
                headers={"Idempotency-Key": key},
            ) as reply:
                status = reply.status
                body: dict[str, Any] = await reply.json()
                retry_after = float(reply.headers.get("Retry-After", "1"))
        except (aiohttp.ClientError, TimeoutError) as err:
            tally.outcomes[type(err).__name__] += 1
            tally.late += 1
            return None
        if status in (429, 503) and body.get("error", {}).get("code") != "turn_in_progress":
            tally.refusals.append((time.perf_counter() - sent) * 1000)
            if attempt < retries:
                await asyncio.sleep(retry_after)
                continue
            tally.outcomes["gave up after refusals"] += 1
            return None
        waited = time.perf_counter() - started
        tally.outcomes[str(status)] += 1
        if status == 200:
            tally.answered.append(waited * 1000)
            tally.answered_at.append(time.perf_counter() - tally.began)
            tally.admitted.append((time.perf_counter() - sent) * 1000)
        if status != 200 or waited > TURN_DEADLINE_SECONDS:
            tally.late += 1
        return body if status == 200 else None
    return None


def one_turn(number: int) -> list[str]:
    """A conversation of one turn, from the mix the peak was measured with."""
    return [TEXTS[number % len(TEXTS)]]


async def open_loop(
    stack: EmbeddedStack,
    rate: float,
    seconds: float,
    retries: int,
    script: Callable[[int], list[str]] = one_turn,
) -> dict[str, Any]:
    """Conversations arriving at `rate` a second for `seconds`, the `number`th sending the turns
    `script(number)` one after the other (by default one: then each arrival is a turn), each turn retried
    as `Retry-After` says. A conversation still going when the arrivals stop sends no more turns: what is
    measured is the load while it lasts, and the turns in flight then."""
    run_id = uuid.uuid4().hex[:6]
    tally = Tally()
    async with session(stack) as http:

        async def converse(number: int) -> None:
            for index, text in enumerate(script(number)):
                if index and time.perf_counter() - tally.began > seconds:
                    return
                await send_turn(
                    http, tally, f"overload-{run_id}-{number}", text, f"{run_id}-{number}-{index}", retries
                )

        tasks = []
        for number in range(int(rate * seconds)):
            # Arrivals on a fixed schedule, whatever the replies do: an open loop.
            await asyncio.sleep(max(0.0, tally.began + number / rate - time.perf_counter()))
            tasks.append(asyncio.create_task(converse(number)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - tally.began
        async with http.get("/metrics") as response:
            scraped = await response.text()
    # Goodput while the overload lasts, after its first WARM_UP_SECONDS (the queue filling): not the
    # tail after the last arrival, when the load is gone.
    in_window = sum(1 for at in tally.answered_at if WARM_UP_SECONDS <= at <= seconds)
    return {
        "arrivals_per_second": round(rate, 1),
        "seconds": round(elapsed, 1),
        "goodput_per_second": round(in_window / (seconds - WARM_UP_SECONDS), 1),
        "answered": len(tally.answered),
        "answered_latency_ms": _percentiles(tally.answered),
        "admitted_attempt_latency_ms": _percentiles(tally.admitted),
        "past_deadline_or_unanswered": tally.late,
        "outcomes": dict(tally.outcomes),
        "refusal_latency_ms": _percentiles(tally.refusals),
        "refusals_in_the_api": refusals_in_the_api(scraped),
    }


def _percentiles(values: list[float]) -> dict[str, float]:
    return percentiles(values) if len(values) > 1 else {"n": len(values)}


def refusals_in_the_api(exposition: str) -> dict[str, Any]:
    """The API's own timing of its 503 answers (from request to reply, in the server), from its `/metrics`:
    how many, and how many within 50 ms. The client's timing above adds its own queueing on this
    machine's saturated cores."""
    count = within = 0.0
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.labels.get("status") != "503":
                continue
            if sample.name == "dialogue_http_request_duration_seconds_count":
                count += sample.value
            elif (
                sample.name == "dialogue_http_request_duration_seconds_bucket"
                and sample.labels["le"] == "0.05"
            ):
                within += sample.value
    return {
        "answered_503": int(count),
        "within_50_ms": int(within),
        "share_within_50_ms": round(within / count, 3) if count else None,
    }


async def measure(
    stack: EmbeddedStack, users: int, conversations: int, seconds: float, retries: int
) -> dict[str, Any]:
    await asyncio.to_thread(stack.__enter__)
    try:
        assert stack.pid is not None
        processes = process_tree(stack.pid)
        peak = await level(stack, processes, conversations, 1, users)
        meter = CpuMeter(processes)
        over = await open_loop(stack, 2 * peak["turns_per_second"], seconds, retries)
        # Where the CPU went while overloaded: the load generator shares this machine's cores.
        over["cpu_cores_busy"] = {name: round(cpu / over["seconds"], 2) for name, cpu in meter.used().items()}
        over["goodput_fraction_of_peak"] = round(over["goodput_per_second"] / peak["turns_per_second"], 3)
    finally:
        await asyncio.to_thread(stack.__exit__, None, None, None)
    result = {
        "peak": {
            k: peak[k]
            for k in ("concurrency", "turns_per_second", "latency_ms", "failures", "cpu_cores_busy")
        },
        "at_twice_the_peak": over,
    }
    print(json.dumps(result), flush=True)
    return result


async def run(users: int, conversations: int, seconds: float, retries: int) -> dict[str, Any]:
    shedding = EmbeddedStack(rate_limit_per_second="0", **default_bot())
    unlimited = EmbeddedStack(rate_limit_per_second="0", max_turns_in_flight="0", **default_bot())
    return {
        **header("overload"),
        "retries": retries,
        "with_shedding": await measure(shedding, users, conversations, seconds, retries),
        "without_shedding": await measure(unlimited, users, conversations, seconds, retries),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--conversations", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--retries", type=int, default=2)
    args = parser.parse_args()
    result = asyncio.run(run(args.users, args.conversations, args.seconds, args.retries))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "overload.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
