"""What a turn costs against Temporal's own floor (issue 31), on one stack of the default bot as `make run`
starts it (trained NLU with embeddings, hybrid retrieval, grounded answers; the per-key rate limit off,
as one key sends everything; the load shedding at its default), all in one run so the ratios compare:

- `ceiling`: the bare-update ceiling through the stack's dev server, with as many updates per workflow as
  a conversation of the mix has turns, one after the other, 50 in flight (`bench.ceiling`); measured
  again right after the closed loop, whose fraction is of the two's mean;
- `one`: one turn at a time over HTTP across the mix, each followed by one bare update through the same
  server (the floor): p50/p90 of both, the ratio of the p50s, and each kind of turn's latency;
- `closed`: `--users` users, each holding conversations of the mix one after the other: turns/s and its
  fraction of the ceiling, latency, failures, and each process's CPU per turn (the stack's processes
  summed; the load generator, this process, beside them);
- `open`: turns arriving at fixed rates, given as fractions of the ceiling (`--fractions`), for
  `--step-seconds` each, until p99 passes 1 s in two steps in a row: achieved turns/s, p50/p99 and
  failures per rate, and the largest rate whose p99 stayed within 1 s, as a fraction of the ceiling.

Each part also says how many cores the machine's other work kept busy meanwhile (`others`): the stack
shares 2 cores with it, and a part measured while others were busy is slower and costs more CPU; near 0
the numbers are the stack's own.

`--only` runs some of the parts (`--only ceiling,closed`: an A/B of two commits in a few minutes); the open
loop's rates need the ceiling, which is then measured too. Results in bench/results/turn_cost.json (or
`--output`), and a summary printed.

    .venv/bin/python -m bench.turn_cost [--conversations 400] [--users 50] [--updates 4000]
        [--step-seconds 30] [--rounds 600] [--fractions 0.05 0.1 ...] [--only ceiling,one,closed,open]
        [--output turn_cost.json] [--quick] [--setting embedding_precision=float32 ...]

The defaults took 10 and 14 minutes on this 2-core machine while other work kept 0.7 to 1.3 of its cores
busy (the closed loop and the open loop most of it; the open loop's steps end sooner when the stack gives
up sooner; a quiet machine is faster), plus 2 minutes when `make run` has not trained the NLU model in
this checkout (`bench.stack.default_bot`). `--quick` is a
smoke run of about 3 minutes; its numbers are too few to quote.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections import Counter, defaultdict
from typing import Any

from bench.ceiling import ceiling
from bench.overload import Tally, open_loop, send_turn, session
from bench.stack import EmbeddedStack, default_bot
from bench.streaming import RESULTS, header, percentiles
from bench.throughput import CpuMeter, process_tree
from bench.turn_latency import baseline_turn, baseline_worker

# The mix: the realistic conversation of 8 turns. A support chat opens with a greeting, asks the
# knowledge base most of its questions (retrieval and a grounded answer: the costly path), runs the
# order-status flow (a prompt, then the number; once with a question in between, once filled in the
# first turn, once started by a question answered first), strays out of scope once, and closes with
# thanks or a goodbye (which ends the conversation: its workflow closes, as a real one's does). Four
# scripts in turn, so the load is not one path through the NLU's, retrieval's and Temporal's caches.
# Each turn carries its kind, for the latency of each kind.
MIX: list[list[tuple[str, str]]] = [
    [
        ("greeting, first turn", "hello"),
        ("knowledge", "how much does express shipping cost?"),
        ("flow", "where is my order?"),
        ("flow", "it is NW-482913"),
        ("knowledge", "can I pay with PayPal?"),
        ("out of scope", "What's the capital of Australia?"),
        ("knowledge", "Is accidental damage included in the warranty?"),
        ("closing", "goodbye"),
    ],
    [
        ("greeting, first turn", "hi there"),
        ("knowledge", "how many days do I have to return an item?"),
        ("flow", "where is my order?"),
        ("knowledge", "can I pay with PayPal?"),
        ("flow", "NW-105733"),
        ("out of scope", "who wrote pride and prejudice"),
        ("knowledge", "is the smart plug compatible with Google Home?"),
        ("closing", "thank you"),
    ],
    [
        ("greeting, first turn", "good morning"),
        ("flow", "where is my order NW-654321?"),
        ("knowledge", "How much will delivery cost me if my basket is only 35 euros?"),
        ("knowledge", "how do I set up an account"),
        ("out of scope", "how much is a ticket to the Louvre"),
        ("knowledge", "whats the cancellation process"),
        ("knowledge", "need an invoice with our company VAT number on it"),
        ("closing", "I think that covers it, goodbye"),
    ],
    [
        ("greeting, first turn", "hey"),
        ("flow", "When do I get the tracking number for my parcel?"),
        ("flow", "NW-300218"),
        ("knowledge", "how long does standard shipping take within Germany?"),
        ("out of scope", "What is the tallest mountain in Africa?"),
        ("knowledge", "what ways can I pay"),
        ("knowledge", "is the refund done yet?"),
        ("closing", "thanks heaps"),
    ],
]
MIX_TURNS = 8
assert all(len(script) == MIX_TURNS for script in MIX)
PARTS = ("ceiling", "one", "closed", "open")
RETRIES = 2
"""A refused turn (503, 429) is sent again after `Retry-After` this many times, as a well-behaved client."""
P99_WITHIN_MS = 1000.0
FRACTIONS = [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.8, 1.0]


def script(number: int) -> list[tuple[str, str]]:
    """The `number`th conversation's turns (kind, text)."""
    return MIX[number % len(MIX)]


def texts(number: int) -> list[str]:
    return [text for _, text in script(number)]


def failures(tally: Tally) -> dict[str, int]:
    """The turns not answered, by their last status or error, and the refusals sent again."""
    failed = {outcome: count for outcome, count in tally.outcomes.items() if outcome != "200"}
    resent = len(tally.refusals) - tally.outcomes["gave up after refusals"]  # each gave up after its last
    return failed | ({"refused, sent again": resent} if resent else {})


async def one_at_a_time(stack: EmbeddedStack, processes: dict[int, str], rounds: int) -> dict[str, Any]:
    """`rounds` turns over HTTP one at a time, conversation after conversation of the mix, each followed by
    a bare update (through the stack's dev server, to this process's worker) in a workflow taking as many
    updates as the conversation: the turn against Temporal's floor, side by side."""
    client = await stack.temporal_client()
    run_id = uuid.uuid4().hex[:6]
    warm_up = len(MIX) * MIX_TURNS  # each script once
    turns: list[float] = []
    floor: list[float] = []
    by_kind: dict[str, list[float]] = defaultdict(list)
    intents: dict[str, Counter[str]] = defaultdict(Counter)
    tally = Tally()
    meter = CpuMeter(processes)
    async with baseline_worker(client), session(stack) as http:
        for index in range(warm_up + rounds):
            number, turn = divmod(index, MIX_TURNS)
            kind, text = script(number)[turn]
            started = time.perf_counter()
            reply = await send_turn(http, tally, f"one-{run_id}-{number}", text, f"{run_id}-{index}", RETRIES)
            turn_ms = (time.perf_counter() - started) * 1000
            started = time.perf_counter()
            await baseline_turn(client, 0, f"floor-{run_id}-{number}", text)
            floor_ms = (time.perf_counter() - started) * 1000
            if index < warm_up or reply is None:
                continue
            turns.append(turn_ms)
            floor.append(floor_ms)
            by_kind[kind].append(turn_ms)
            intents[kind][reply["nlu"]["intent"]["name"]] += 1
    turn_stats, floor_stats = percentiles(turns), percentiles(floor)
    return {
        "rounds": rounds,
        "turn_ms": turn_stats,
        "floor_ms": floor_stats,
        "turn_over_floor_p50": round(turn_stats["p50"] / floor_stats["p50"], 2),
        "failures": failures(tally),
        "other_processes_cores_busy": meter.others_cores_busy(),
        # What each kind of turn costs, and what the bot made of it: the mix does what it says.
        "by_kind": {
            kind: {"ms": percentiles(values), "intents": dict(intents[kind])}
            for kind, values in by_kind.items()
        },
    }


async def closed_loop(
    stack: EmbeddedStack, processes: dict[int, str], users: int, conversations: int
) -> dict[str, Any]:
    """`users` users, each sending the turns of its conversations of the mix one after the other, a new
    conversation once one is done, `conversations` in all: turns/s, latency, failures, CPU per turn."""
    run_id = uuid.uuid4().hex[:6]
    tally = Tally()
    async with session(stack) as http:
        await send_turn(http, Tally(), f"warm-{run_id}", "hello", f"warm-{run_id}", RETRIES)

        async def user(first: int) -> None:
            for number in range(first, conversations, users):
                for index, text in enumerate(texts(number)):
                    key = f"{run_id}-{number}-{index}"
                    await send_turn(http, tally, f"closed-{run_id}-{number}", text, key, RETRIES)

        meter = CpuMeter(processes)
        tally.began = time.perf_counter()
        await asyncio.gather(*(user(first) for first in range(users)))
        elapsed = time.perf_counter() - tally.began
        cpu = meter.used()
    answered = max(len(tally.answered), 1)
    per_turn = {name: round(1000 * seconds / answered, 1) for name, seconds in cpu.items()}
    return {
        "users": users,
        "conversations": conversations,
        "seconds": round(elapsed, 1),
        "turns_per_second": round(len(tally.answered) / elapsed, 1),
        "latency_ms": percentiles(tally.answered),
        "failures": failures(tally),
        "cpu_ms_per_turn": per_turn,
        "stack_cpu_ms_per_turn": round(sum(per_turn[name] for name in processes.values()), 1),
        "cpu_cores_busy": round(sum(cpu.values()) / elapsed, 2),
        "other_processes_cores_busy": meter.others_cores_busy(),
    }


async def open_steps(
    stack: EmbeddedStack,
    processes: dict[int, str],
    ceiling_rate: float,
    fractions: list[float],
    seconds: float,
) -> dict[str, Any]:
    """Turns arriving at each fraction of `ceiling_rate` in turn, for `seconds` each, until p99 passes
    P99_WITHIN_MS in two steps in a row. The arrivals are conversations of the mix at an eighth of the
    rate, each sending its turns one after the other: a user waits for an answer before the next
    question, so the turns of one conversation never arrive at once, while the conversations arrive
    whatever the stack does (an open loop); the stack sees the mix's first turns and later turns in
    their real proportion."""
    steps: list[dict[str, Any]] = []
    past = 0
    for fraction in fractions:
        rate = fraction * ceiling_rate
        meter = CpuMeter(processes)
        step = await open_loop(stack, rate / MIX_TURNS, seconds, RETRIES, script=texts)
        cpu = meter.used()
        latency = step["answered_latency_ms"]
        outcomes = step["outcomes"]
        steps.append(
            {
                "fraction_of_ceiling": fraction,
                "offered_turns_per_second": round(rate, 1),
                "turns_per_second": step["goodput_per_second"],
                "achieved_fraction_of_ceiling": round(step["goodput_per_second"] / ceiling_rate, 3),
                "latency_ms": latency,
                "failures": {k: v for k, v in outcomes.items() if k != "200"}
                | ({"refused": n} if (n := step["refusal_latency_ms"]["n"]) else {}),
                "other_processes_cores_busy": meter.others_cores_busy(),
                "stack_cpu_ms_per_turn": round(
                    1000 * sum(cpu[name] for name in processes.values()) / max(step["answered"], 1), 1
                ),
            }
        )
        print(json.dumps(steps[-1]), flush=True)
        past = past + 1 if latency.get("p99", float("inf")) > P99_WITHIN_MS else 0
        if past == 2:
            break
    within = [
        s["fraction_of_ceiling"] for s in steps if s["latency_ms"].get("p99", float("inf")) <= P99_WITHIN_MS
    ]
    return {
        "step_seconds": seconds,
        "steps": steps,
        "largest_fraction_of_ceiling_with_p99_within_1s": max(within, default=None),
    }


async def measured_ceiling(stack: EmbeddedStack, processes: dict[int, str], updates: int) -> dict[str, Any]:
    """The ceiling with as many updates per workflow as a conversation of the mix has turns."""
    meter = CpuMeter(processes)
    top = await ceiling(stack, updates, processes, MIX_TURNS)
    return top | {"other_processes_cores_busy": meter.others_cores_busy()}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    stack = EmbeddedStack(rate_limit_per_second="0", **default_bot(), **dict(args.setting))
    result: dict[str, Any] = {
        **header("turn_cost", bot="default", parts=args.only, settings=dict(args.setting)),
        "mix": MIX,
    }
    await asyncio.to_thread(stack.__enter__)
    try:
        assert stack.pid is not None
        processes = process_tree(stack.pid)
        top: dict[str, Any] | None = None
        if "ceiling" in args.only:
            top = result["ceiling"] = await measured_ceiling(stack, processes, args.updates)
        if "one" in args.only:
            result["one_at_a_time"] = await one_at_a_time(stack, processes, args.rounds)
        if "closed" in args.only:
            closed = result["closed_loop"] = await closed_loop(
                stack, processes, args.users, args.conversations
            )
            if top:
                # The ceiling again right after: the closed loop's fraction is of the two's mean, and
                # their difference shows how much the machine's other work moved it meanwhile.
                after = result["ceiling_after_closed_loop"] = await measured_ceiling(
                    stack, processes, args.updates
                )
                mean = (top["updates_per_second"] + after["updates_per_second"]) / 2
                closed["fraction_of_ceiling"] = round(closed["turns_per_second"] / mean, 3)
        if "open" in args.only:
            assert top is not None
            result["open_loop"] = await open_steps(
                stack, processes, top["updates_per_second"], args.fractions, args.step_seconds
            )
    finally:
        await asyncio.to_thread(stack.__exit__, None, None, None)
    return result


def summary(result: dict[str, Any]) -> str:
    """The numbers to quote, each part with the cores the machine's other work kept busy meanwhile."""
    lines = []
    for name in ("ceiling", "ceiling_after_closed_loop"):
        if top := result.get(name):
            lines.append(
                f"{name.replace('_', ' ')}: {top['updates_per_second']} bare updates/s "
                f"({top['updates_per_workflow']} per workflow), CPU ms per update {top['cpu_ms_per_update']} "
                f"[others {top['other_processes_cores_busy']} cores]"
            )
    if one := result.get("one_at_a_time"):
        turn, floor = one["turn_ms"], one["floor_ms"]
        lines.append(
            f"one at a time: turn p50 {turn['p50']} ms (p90 {turn['p90']}), bare-update floor p50 {floor['p50']} "
            f"ms (p90 {floor['p90']}): {one['turn_over_floor_p50']}x [others {one['other_processes_cores_busy']} cores]"
        )
        lines += [
            f"  {kind}: p50 {k['ms']['p50']} ms, p90 {k['ms']['p90']}" for kind, k in one["by_kind"].items()
        ]
    if closed := result.get("closed_loop"):
        latency = closed["latency_ms"]
        lines.append(
            f"closed loop, {closed['users']} users: {closed['turns_per_second']} turns/s = "
            f"{closed.get('fraction_of_ceiling', '?')} of the ceiling, p50/p90/p99 {latency['p50']}/"
            f"{latency['p90']}/{latency['p99']} ms, failures {closed['failures']} "
            f"[others {closed['other_processes_cores_busy']} cores]"
        )
        lines.append(
            f"  CPU ms per turn: stack {closed['stack_cpu_ms_per_turn']}, by process {closed['cpu_ms_per_turn']}"
        )
    if opened := result.get("open_loop"):
        for step in opened["steps"]:
            lines.append(
                f"open loop at {step['fraction_of_ceiling']} of the ceiling ({step['offered_turns_per_second']}/s): "
                f"{step['turns_per_second']} turns/s, p50 {step['latency_ms'].get('p50')} ms, "
                f"p99 {step['latency_ms'].get('p99')} ms, failures {step['failures']}, "
                f"stack CPU {step['stack_cpu_ms_per_turn']} ms per turn [others {step['other_processes_cores_busy']} cores]"
            )
        lines.append(
            f"  largest rate with p99 <= 1 s: {opened['largest_fraction_of_ceiling_with_p99_within_1s']} "
            "of the ceiling"
        )
    return "\n".join(lines)


def parts(value: str) -> list[str]:
    chosen = [{"mix": "closed"}.get(part, part) for part in value.split(",") if part]
    unknown = set(chosen) - set(PARTS)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown parts {sorted(unknown)}: choose among {', '.join(PARTS)}")
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=400, help="of the closed loop, 8 turns each")
    parser.add_argument("--users", type=int, default=50, help="of the closed loop")
    parser.add_argument("--updates", type=int, default=4000, help="bare updates measured for the ceiling")
    parser.add_argument("--step-seconds", type=float, default=30, help="each rate of the open loop")
    parser.add_argument("--rounds", type=int, default=600, help="turns (and bare updates) one at a time")
    parser.add_argument("--fractions", type=float, nargs="+", default=FRACTIONS, help="the open loop's rates")
    parser.add_argument("--only", type=parts, default=list(PARTS), help=f"some of {','.join(PARTS)}")
    parser.add_argument("--output", default="turn_cost.json", help="its name in bench/results")
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer of everything")
    parser.add_argument(
        "--setting",
        type=lambda said: tuple(said.split("=", 1)),
        action="append",
        default=[],
        help="NAME=VALUE: the stack's DIALOGUE_NAME (embedding_precision=float32, say), for an A/B of one setting",
    )
    args = parser.parse_args()
    if args.quick:
        args.conversations, args.updates, args.step_seconds, args.rounds = 50, 1000, 10, 64
        args.fractions = args.fractions[1::2]
    if "open" in args.only and "ceiling" not in args.only:
        args.only.insert(0, "ceiling")  # the open loop's rates are fractions of it
    result = asyncio.run(run(args))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(summary(result))


if __name__ == "__main__":
    main()
