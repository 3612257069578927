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
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from bench.stack import EmbeddedStack, default_bot
from bench.streaming import RESULTS, header, percentiles
from bench.throughput import cpu_seconds, level, own_cpu, process_tree
from bench.turn_latency import TEXTS

WARM_UP_SECONDS = 5.0
TURN_DEADLINE_SECONDS = 20.0
"""The stack's default turn deadline: an answer later than this from the first attempt waited too long."""


async def open_loop(stack: EmbeddedStack, rate: float, seconds: float, retries: int) -> dict[str, Any]:
    """Turns arriving at `rate` a second for `seconds`, each retried as `Retry-After` says. On aiohttp, not
    httpx: the load generator shares the stack's cores, and httpx cost it twice the API's CPU here."""
    answered: list[float] = []
    answered_at: list[float] = []
    admitted: list[float] = []
    refusals: list[float] = []
    late = 0
    outcomes: dict[str, int] = {}
    run_id = uuid.uuid4().hex[:6]
    began = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=2000)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(
        stack.api, headers=stack.headers, connector=connector, timeout=timeout
    ) as http:

        async def one_turn(number: int) -> None:
            nonlocal late
            started = time.perf_counter()
            key = f"{run_id}-{number}"
            for attempt in range(retries + 1):
                sent = time.perf_counter()
                try:
                    async with http.post(
                        f"/v1/conversations/overload-{key}/turns",
                        json={"text": TEXTS[number % len(TEXTS)]},  # the mix the peak was measured with
                        headers={"Idempotency-Key": key},
                    ) as reply:
                        status = reply.status
                        body: dict[str, Any] = await reply.json()
                        retry_after = float(reply.headers.get("Retry-After", "1"))
                except (aiohttp.ClientError, TimeoutError) as err:
                    outcomes[type(err).__name__] = outcomes.get(type(err).__name__, 0) + 1
                    late += 1
                    return
                if status in (429, 503) and body.get("error", {}).get("code") != "turn_in_progress":
                    refusals.append((time.perf_counter() - sent) * 1000)
                    if attempt < retries:
                        await asyncio.sleep(retry_after)
                        continue
                    outcomes["gave up after refusals"] = outcomes.get("gave up after refusals", 0) + 1
                    return
                waited = time.perf_counter() - started
                outcomes[str(status)] = outcomes.get(str(status), 0) + 1
                if status == 200:
                    answered.append(waited * 1000)
                    answered_at.append(time.perf_counter() - began)
                    admitted.append((time.perf_counter() - sent) * 1000)
                if status != 200 or waited > TURN_DEADLINE_SECONDS:
                    late += 1
                return

        tasks = []
        for number in range(int(rate * seconds)):
            # Arrivals on a fixed schedule, whatever the replies do: an open loop.
            await asyncio.sleep(max(0.0, began + number / rate - time.perf_counter()))
            tasks.append(asyncio.create_task(one_turn(number)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - began
        async with http.get("/metrics") as response:
            scraped = await response.text()
    # Goodput while the overload lasts, after its first WARM_UP_SECONDS (the queue filling): not the
    # tail after the last arrival, when the load is gone.
    in_window = sum(1 for at in answered_at if WARM_UP_SECONDS <= at <= seconds)
    return {
        "arrivals_per_second": round(rate, 1),
        "seconds": round(elapsed, 1),
        "goodput_per_second": round(in_window / (seconds - WARM_UP_SECONDS), 1),
        "answered": len(answered),
        "answered_latency_ms": _percentiles(answered),
        "admitted_attempt_latency_ms": _percentiles(admitted),
        "past_deadline_or_unanswered": late,
        "outcomes": outcomes,
        "refusal_latency_ms": _percentiles(refusals),
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
        cpu_before = {pid: cpu_seconds(pid) for pid in processes}
        own_before = own_cpu()
        over = await open_loop(stack, 2 * peak["turns_per_second"], seconds, retries)
        # Where the CPU went while overloaded: the load generator shares this machine's cores.
        over["cpu_cores_busy"] = {
            name: round((cpu_seconds(pid) - cpu_before[pid]) / over["seconds"], 2)
            for pid, name in processes.items()
        } | {"load generator": round((own_cpu() - own_before) / over["seconds"], 2)}
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
