"""Flood: clients that ignore `Retry-After` and resend a refused turn at once, against one stack.

On the default bot as `make run` starts it (the per-key rate limit off: one key sends everything, and
the engine is what is measured), first the peak: the turns/s the stack sustains at `--users` users in
a closed loop, with each process's CPU per answered turn. Then the floods, one after the other on the
same stack, each for `--seconds`:

- `open loop` at each of `--multiples` times the peak: new turns arrive on a fixed schedule, whatever
  the replies do (bench/overload.py's open loop), over at most `--connections` connections;
- `tight loop`: `--connections` clients, each sending a turn, resending it until it is answered, then
  sending the next one (the issue's 400 connections resending at once);
- `tight loop ..., a new conversation each attempt`: the same clients dropping a refused turn for a new
  one in a new conversation at once. Nothing is ever sent again, so only the cost of a refusal limits
  how often the API is asked: the API's CPU per refusal is measured best here, where refusals are nearly
  all it does.

A client refused (503 `overloaded`, 429) sends the same turn again at once with the same idempotency key,
until it is answered or its turn is past the turn deadline (then it gives up). When a flood's time is
up no turn is sent or resent any more, and the attempts in flight are waited for.

Reported per flood: goodput (turns answered per second while it lasts, after its first
WARM_UP_SECONDS, and as a fraction of the peak), refusals (and per second, counted by the clients and
by the API), turns answered past the deadline from their first attempt or answered 504, turns given up
at the deadline or left unanswered when the flood ended, client errors (timeouts), p50/p99 of answered
turns from their first attempt and of the attempt admitted (and how many of those passed the deadline,
as the clients timed them, which counts the wait for a free connection of the load generator's, and as
the API timed them from admission to reply: `admitted_turns_past_deadline_in_the_api`),
and each process's CPU (cores busy) during the flood, the load generator's included: it shares the
stack's two cores. From the API's CPU: its CPU per request, and per refusal (its CPU less what the
flood's answered turns cost it at the peak's CPU per turn, over the refusals: an estimate that is only
as good as refusals outnumber answers), against its CPU per answered turn at the peak. With `--profile`, where the API's CPU goes at the peak and in each
flood (py-spy samples, by part of the code).

    .venv/bin/python -m bench.flood [--users 50] [--conversations 800] [--seconds 30] \
        [--multiples 2 10] [--connections 400] [--no-tight-loop] [--profile] [--output flood.json]

A full run takes about 7 minutes; `--conversations 300 --seconds 10 --multiples 10 --no-tight-loop`
about 2. Results in bench/results/flood.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import uvloop
from prometheus_client.parser import text_string_to_metric_families

from bench.overload import TURN_DEADLINE_SECONDS, WARM_UP_SECONDS
from bench.profile import sample, summarise
from bench.stack import EmbeddedStack, default_bot
from bench.streaming import RESULTS, header, percentiles
from bench.throughput import cpu_seconds, level, own_cpu, process_tree
from bench.turn_latency import TEXTS

REFUSED = (429, 503)
API_PARTS = {
    # py-spy names a frame of a namespace package (opentelemetry) from below it: `asgi/__init__.py`.
    "OpenTelemetry": (
        "OpenTelemetryMiddleware",
        "(asgi/",
        "(trace/",
        "(context/",
        "(attributes/",
        "(util/",
        "(propagate/",
        "(sdk/",
        "(semconv",
        "(fastapi/__init__.py",
        "(metrics/",
        "(baggage/",
    ),
    "fastapi / starlette middleware": (
        "starlette/middleware",
        "fastapi/telemetry",
        "fastapi/_body_limit",
        "fastapi/middleware",
        "fastapi/applications",
        "starlette/applications",
    ),
    "request telemetry (metrics, log line)": ("api/request_telemetry.py",),
    "prometheus": ("prometheus_client/",),
    "logging": ("logging/", "dialogue/platform/logs", "json/"),
    "turn admission": ("api/limits.py",),
    "authentication": ("api/deps.py", "dialogue/security", "hmac"),
    "thread pool": ("anyio/", "starlette/concurrency", "threading.py", "concurrent/futures", "sniffio/"),
    "error response": ("api/errors.py", "starlette/responses", "starlette/datastructures"),
    "route matching": ("_iter_routes_with_context", "starlette/routing.py", "_get_routes_version"),
    "dependencies and validation": ("fastapi/dependencies", "pydantic"),
    "turn route": ("api/routes/",),
    "temporal client": ("temporalio/", "google/protobuf"),
    "fastapi routing (other)": ("fastapi/routing.py",),
    "uvicorn (HTTP)": ("uvicorn/", "httptools"),
    "event loop": ("asyncio/", "uvloop"),
}
"""Where the API's CPU goes, by the paths of the frames on the stack (inclusive: a sample counts for each)."""
PROFILE_RATE = 250
SATURATED = 0.9
"""Cores busy at which the load generator (one asyncio loop, so one core) is the flood's bottleneck."""


@dataclass
class Tally:
    """What the clients of one flood saw, with times in seconds from the flood's start."""

    began: float = field(default_factory=time.perf_counter)
    answered: list[float] = field(default_factory=list)
    """Latency of each answered turn from its first attempt (ms)."""
    answered_at: list[float] = field(default_factory=list)
    admitted: list[float] = field(default_factory=list)
    """Latency of the attempt that was answered (ms)."""
    refused_at: list[float] = field(default_factory=list)
    late: int = 0
    """Answered past the turn deadline from the first attempt, or answered 504."""
    gave_up: int = 0
    """Still refused when the turn was past its deadline: the client stopped sending it."""
    unanswered: int = 0
    """Still refused when the flood's time was up."""
    outcomes: dict[str, int] = field(default_factory=dict)

    def now(self) -> float:
        return time.perf_counter() - self.began

    def note(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1


async def resend_until_answered(
    http: aiohttp.ClientSession, key: str, text: str, tally: Tally, ends: float, resend: bool = True
) -> None:
    """One turn, sent again at once each time it is refused (unless not to `resend`), until it is answered,
    past its deadline, or the flood ends (`ends`, seconds from the flood's start)."""
    started = time.perf_counter()
    while True:
        sent = time.perf_counter()
        try:
            async with http.post(
                f"/v1/conversations/flood-{key}/turns", json={"text": text}, headers={"Idempotency-Key": key}
            ) as reply:
                status = reply.status
                await reply.read()
        except (aiohttp.ClientError, TimeoutError) as err:
            tally.note(type(err).__name__)
            return
        if status in REFUSED:
            tally.refused_at.append(tally.now())
            if not resend:
                return
            if tally.now() >= ends:
                tally.unanswered += 1
                return
            if time.perf_counter() - started > TURN_DEADLINE_SECONDS:
                tally.gave_up += 1
                return
            continue
        waited = time.perf_counter() - started
        tally.note(str(status))
        if status == 200:
            tally.answered.append(waited * 1000)
            tally.answered_at.append(tally.now())
            tally.admitted.append((time.perf_counter() - sent) * 1000)
        if status == 504 or waited > TURN_DEADLINE_SECONDS:
            tally.late += 1
        return


async def open_loop(http: aiohttp.ClientSession, rate: float, seconds: float, tally: Tally) -> None:
    """Turns arriving at `rate` a second for `seconds`, whatever the replies do."""
    run_id = uuid.uuid4().hex[:6]
    tasks = []
    for number in range(int(rate * seconds)):
        await asyncio.sleep(max(0.0, number / rate - tally.now()))
        turn = resend_until_answered(http, f"{run_id}-{number}", TEXTS[number % len(TEXTS)], tally, seconds)
        tasks.append(asyncio.create_task(turn))
    await asyncio.gather(*tasks)


async def tight_loop(
    http: aiohttp.ClientSession, clients: int, seconds: float, tally: Tally, resend: bool = True
) -> None:
    """`clients` clients, each sending one turn after another for `seconds`, every refusal resent at once;
    or, not to `resend`, dropped for a new turn in a new conversation at once."""
    run_id = uuid.uuid4().hex[:6]

    async def client(number: int) -> None:
        sent = 0
        while tally.now() < seconds:
            key = f"{run_id}-{number}-{sent}"
            text = TEXTS[(number + sent) % len(TEXTS)]
            await resend_until_answered(http, key, text, tally, seconds, resend)
            sent += 1

    await asyncio.gather(*(client(n) for n in range(clients)))


async def flood(
    stack: EmbeddedStack,
    processes: dict[int, str],
    peak: dict[str, Any],
    seconds: float,
    connections: int,
    send: Callable[[aiohttp.ClientSession, Tally], Coroutine[Any, Any, None]],
    profile: Path | None = None,
) -> dict[str, Any]:
    """One flood sent by `send`, with what the clients saw and each process's CPU while it lasted (and the
    API sampled with py-spy into `profile`, if given)."""
    # On aiohttp with uvloop, not httpx: the load generator shares the stack's cores (bench/overload.py).
    connector = aiohttp.TCPConnector(limit=connections)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(
        stack.api, headers=stack.headers, connector=connector, timeout=timeout
    ) as http:
        before = await api_counts(http)
        tally = Tally()
        sampler = sample(api_pid(processes), profile, PROFILE_RATE) if profile else None
        cpu_before = {pid: cpu_seconds(pid) for pid in processes}
        own_before = own_cpu()
        sending = asyncio.create_task(send(http, tally))
        # The CPU while the flood lasts, not while its last attempts drain.
        await asyncio.sleep(max(0.0, seconds - tally.now()))
        cpu = {name: cpu_seconds(pid) - cpu_before[pid] for pid, name in processes.items()}
        cpu["load generator"] = own_cpu() - own_before
        elapsed = tally.now()
        if sampler is not None:
            sampler.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        await sending
        drained = tally.now()
        in_the_api = (await api_counts(http)) - before
        if sampler is not None:
            await asyncio.to_thread(sampler.wait, 60)
    answered_during = sum(1 for at in tally.answered_at if at <= elapsed)
    in_window = sum(1 for at in tally.answered_at if WARM_UP_SECONDS <= at <= seconds)
    refused_during = sum(1 for at in tally.refused_at if at <= elapsed)
    goodput = in_window / (seconds - WARM_UP_SECONDS)
    api_cpu = cpu.get("api", 0.0)
    api_ms_per_turn = peak["cpu_ms_per_turn"]["api"]
    # The API's CPU for refusing: all of it less what the turns it answered meanwhile cost at the peak's rate.
    refusing = max(0.0, api_cpu * 1000 - answered_during * api_ms_per_turn)
    per_refusal = refusing / refused_during if refused_during else None
    busy = {name: round(s / elapsed, 2) for name, s in cpu.items()}
    return {
        "connections": connections,
        "seconds": round(elapsed, 1),
        "drained_after_seconds": round(drained - elapsed, 1),
        "goodput_per_second": round(goodput, 1),
        "goodput_fraction_of_peak": round(goodput / peak["turns_per_second"], 3),
        "answered": len(tally.answered),
        "answered_latency_ms": percentiles(tally.answered) if len(tally.answered) > 1 else {},
        "admitted_attempt_latency_ms": percentiles(tally.admitted) if len(tally.admitted) > 1 else {},
        "past_deadline_or_504": tally.late,
        "admitted_attempts_past_deadline": sum(
            1 for ms in tally.admitted if ms > TURN_DEADLINE_SECONDS * 1000
        ),
        "admitted_turns_past_deadline_in_the_api": in_the_api.turns_past_deadline,
        "gave_up_at_the_deadline": tally.gave_up,
        "unanswered_when_the_flood_ended": tally.unanswered,
        "outcomes": tally.outcomes,
        "refusals": len(tally.refused_at),
        "refusals_per_second": round(refused_during / elapsed, 1),
        "refusals_in_the_api": in_the_api.shed,
        "cpu_cores_busy": busy,
        "load_generator_saturated": busy["load generator"] >= SATURATED,
        "api_cpu_ms_per_request": round(api_cpu * 1000 / max(1, refused_during + answered_during), 3),
        "api_cpu_ms_per_refusal": round(per_refusal, 3) if per_refusal is not None else None,
        "refusal_to_answered_turn_cpu": round(per_refusal / api_ms_per_turn, 3) if per_refusal else None,
        **({"api_profile": summarise(profile, API_PARTS)} if profile else {}),
    }


def api_pid(processes: dict[int, str]) -> int:
    return next(pid for pid, name in processes.items() if name == "api")


@dataclass(frozen=True)
class ApiCounts:
    """What the API's `/metrics` counted: the turns it shed, and the turns it admitted whose round trip in
    the API (from admission to reply: `dialogue_turn_duration_seconds`) passed the turn deadline. A client's
    own time for an admitted attempt also counts the time its request waited for one of the load
    generator's connections, which the API never saw."""

    shed: int = 0
    turns_past_deadline: int = 0

    def __sub__(self, other: ApiCounts) -> ApiCounts:
        return ApiCounts(self.shed - other.shed, self.turns_past_deadline - other.turns_past_deadline)


async def api_counts(http: aiohttp.ClientSession) -> ApiCounts:
    async with http.get("/metrics") as response:
        exposition = await response.text()
    shed = turns = within = 0.0
    for family in text_string_to_metric_families(exposition):
        for value in family.samples:
            if value.name == "dialogue_turns_shed_total":
                shed = value.value
            elif value.name == "dialogue_turn_duration_seconds_count":
                turns += value.value
            elif value.name == "dialogue_turn_duration_seconds_bucket" and float(value.labels["le"]) == float(
                TURN_DEADLINE_SECONDS
            ):
                within += value.value
    return ApiCounts(int(shed), int(turns - within))


async def run(
    users: int,
    conversations: int,
    seconds: float,
    multiples: list[float],
    connections: int,
    tight: bool,
    profile: bool,
) -> dict[str, Any]:
    stack = EmbeddedStack(rate_limit_per_second="0", **default_bot())
    # py-spy's raw stacks are kept, for a closer look than the summary (flamegraph.pl takes them as they are).
    profiles = Path(tempfile.mkdtemp(prefix="dialogue-flood-")) if profile else None
    await asyncio.to_thread(stack.__enter__)
    try:
        assert stack.pid is not None
        processes = process_tree(stack.pid)
        sampler = sample(api_pid(processes), profiles / "peak.txt", PROFILE_RATE) if profiles else None
        measured = await level(stack, processes, conversations, 1, users)
        peak = {
            k: measured[k]
            for k in ("concurrency", "turns_per_second", "latency_ms", "failures", "cpu_ms_per_turn")
        }
        if sampler is not None and profiles is not None:
            sampler.send_signal(signal.SIGINT)
            await asyncio.to_thread(sampler.wait, 60)
            peak["api_profile"] = summarise(profiles / "peak.txt", API_PARTS)
        print(json.dumps({"peak": peak}), flush=True)
        floods: dict[str, Any] = {}
        for multiple in multiples:
            rate = multiple * peak["turns_per_second"]

            async def arriving(http: aiohttp.ClientSession, tally: Tally, rate: float = rate) -> None:
                await open_loop(http, rate, seconds, tally)

            name = f"open loop at {multiple:g}x the peak"
            output = profiles / f"{multiple:g}x.txt" if profiles else None
            result = await flood(stack, processes, peak, seconds, connections, arriving, output)
            floods[name] = {"arrivals_per_second": round(rate, 1), **result}
            print(json.dumps({name: floods[name]}), flush=True)
        for resend in (True, False) if tight else ():

            async def looping(http: aiohttp.ClientSession, tally: Tally, resend: bool = resend) -> None:
                await tight_loop(http, connections, seconds, tally, resend)

            name = f"tight loop of {connections} clients" + (
                "" if resend else ", a new conversation each attempt"
            )
            output = profiles / f"tight-{'resend' if resend else 'new'}.txt" if profiles else None
            floods[name] = await flood(stack, processes, peak, seconds, connections, looping, output)
            print(json.dumps({name: floods[name]}), flush=True)
    finally:
        await asyncio.to_thread(stack.__exit__, None, None, None)
    return {
        **header("flood"),
        **({"profiles_in": str(profiles)} if profiles else {}),
        "turn_deadline_seconds": TURN_DEADLINE_SECONDS,
        "peak": peak,
        "floods": floods,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=50, help="closed-loop users that find the peak")
    parser.add_argument("--conversations", type=int, default=800, help="turns sent to find the peak")
    parser.add_argument("--seconds", type=float, default=30, help="how long each flood lasts")
    parser.add_argument(
        "--multiples", type=float, nargs="*", default=[2, 10], help="open-loop rates, x the peak"
    )
    parser.add_argument("--connections", type=int, default=400, help="the clients' connections at most")
    parser.add_argument("--no-tight-loop", dest="tight", action="store_false", help="only the open loops")
    parser.add_argument("--profile", action="store_true", help="sample the API with py-spy, per flood")
    parser.add_argument("--output", default="flood.json", help="file name under bench/results")
    args = parser.parse_args()
    result = uvloop.run(
        run(
            args.users,
            args.conversations,
            args.seconds,
            args.multiples,
            args.connections,
            args.tight,
            args.profile,
        )
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
