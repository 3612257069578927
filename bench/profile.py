"""Profile: where the worker's and the API's CPU goes under the throughput load, sampled with py-spy.

Starts the embedded stack, sends the throughput scenario's load (conversations x turns, bounded
concurrency) and meanwhile samples the worker and the API with `py-spy record` (the Temporal dev
server is Go: its CPU is in bench/throughput.py's numbers). Reports, per process, the share of
samples each part of the code is on the stack for (inclusive), and the functions with the most
samples of their own. Results in bench/results/profile.json.

    .venv/bin/python -m bench.profile [--conversations 300] [--turns 2] [--concurrency 50] [--default-bot]
        [--all-threads]

`--default-bot` profiles the bot as `make run` starts it (trained NLU with embeddings, hybrid retrieval)
instead of the built-in pipeline; its results go to bench/results/profile-default-bot.json.

`--all-threads` samples every thread that is not waiting, not only the one holding the GIL: native code
that releases the GIL (ONNX Runtime's inference, SQLite) then counts for the Python frame that called
it, where with the GIL alone it vanished from the profile (the NLU read as 6% of the worker's samples).
Samples of threads with no Python frame (the SDK core's and ONNX Runtime's own threads, working or not:
py-spy cannot tell) are counted apart, as `no Python frames`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from bench.stack import BUILT_IN_PIPELINE, EmbeddedStack, default_bot
from bench.streaming import RESULTS, header
from bench.throughput import load_client, process_tree, send_load

PARTS = {
    "temporal sandbox": ("temporalio/worker/workflow_sandbox",),
    "temporal workflow instance": ("temporalio/worker/_workflow_instance",),
    "temporal activity worker": ("temporalio/worker/_activity",),
    "temporal core bridge": ("temporalio/bridge",),
    "payload codec (encryption)": ("dialogue/platform/codec",),
    "pydantic": ("pydantic",),
    "data converter": ("temporalio/converter", "temporalio/contrib/pydantic"),
    "protobuf": ("google/protobuf",),
    "sqlalchemy / sqlite": ("sqlalchemy", "sqlite3"),
    "conversation workflow": ("workflows/conversation",),
    "activities": ("/activities/",),
    "nlu + retrieval + generation": (
        "dialogue/brain/nlu",
        "dialogue/brain/knowledge",
        "dialogue/brain/generation",
        "bm25s",
    ),
    "telemetry, metrics, logging": (
        "dialogue/platform/telemetry",
        "prometheus_client",
        "opentelemetry",
        "logging",
    ),
    "fastapi / starlette": ("fastapi", "starlette"),
    "uvicorn (HTTP)": ("uvicorn", "h11", "httptools"),
    "api code": ("/api/",),
    "asyncio": ("asyncio/",),
}
"""Parts of the code, by the paths of their frames: a sample counts for each part on its stack."""
IDLE = (
    "EpollSelector.select",
    "_PollLikeSelector.select",
    "concurrent/futures/thread.py:81",
    "Condition.wait (threading.py",
)
"""Frames of a thread that waits, not works: samples whose top frame is one of these are left out."""


def summarise(folded: Path, parts_by_path: dict[str, tuple[str, ...]] = PARTS) -> dict[str, Any]:
    """Inclusive share per part (of `parts_by_path`); the share of each part as the innermost one on the stack
    (what the part does itself, rather than what it calls: for layers that wrap one another, like
    middleware); and the top functions by own samples; from py-spy's raw (folded) output."""
    parts: Counter[str] = Counter()
    innermost: Counter[str] = Counter()
    own: Counter[str] = Counter()
    busy = 0
    nameless = 0
    for line in folded.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        frames = [frame for frame in stack.split(";") if frame]
        if not frames or not any("(" in frame for frame in frames):
            nameless += int(count_text)  # a thread with no Python frame (with --all-threads)
            continue
        if any(mark in frames[-1] for mark in IDLE):
            continue
        count = int(count_text)
        busy += count
        own[frames[-1]] += count
        for part, marks in parts_by_path.items():
            if any(mark in frame for frame in frames for mark in marks):
                parts[part] += count
        innermost[_innermost_part(frames, parts_by_path)] += count
    return {
        "busy_samples": busy,
        **({"no_python_frames_samples": nameless} if nameless else {}),
        "inclusive_share": {part: round(n / busy, 3) for part, n in parts.most_common()} if busy else {},
        "innermost_share": {part: round(n / busy, 3) for part, n in innermost.most_common()} if busy else {},
        "top_own": [{"frame": frame, "share": round(n / busy, 3)} for frame, n in own.most_common(15)],
    }


def _innermost_part(frames: list[str], parts_by_path: dict[str, tuple[str, ...]]) -> str:
    for frame in reversed(frames):
        for part, marks in parts_by_path.items():
            if any(mark in frame for mark in marks):
                return part
    return "other"


def sample(pid: int, output: Path, rate: int, all_threads: bool = False) -> subprocess.Popen[bytes]:
    """`py-spy record` of the process `pid` until SIGINT, folded stacks to `output`."""
    command = [
        str(Path(sys.executable).with_name("py-spy")),
        "record",
        "--pid",
        str(pid),
        "--rate",
        str(rate),
    ]
    # --gil: only samples of a thread holding the GIL, i.e. running Python, not waiting; else every thread
    # py-spy does not see idle.
    command += [*([] if all_threads else ["--gil"]), "--format", "raw", "--output", str(output)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def run(
    conversations: int,
    turns: int,
    concurrency: int,
    rate: int,
    pipeline: dict[str, str],
    all_threads: bool = False,
) -> dict[str, Any]:
    stack = EmbeddedStack(rate_limit_per_second="0", **pipeline)
    await asyncio.to_thread(stack.__enter__)
    scratch = tempfile.TemporaryDirectory(prefix="dialogue-profile-")
    try:
        assert stack.pid is not None
        roles = {name: pid for pid, name in process_tree(stack.pid).items() if name in ("worker", "api")}
        async with load_client(stack, concurrency) as http:
            await http.post("/v1/conversations/warm-up/turns", json={"text": "hello"})
            samplers = {
                name: sample(pid, Path(scratch.name) / f"{name}.txt", rate, all_threads)
                for name, pid in roles.items()
            }
            await asyncio.sleep(1)  # py-spy attached
            latencies, failures = await send_load(http, conversations, turns, concurrency)
            for sampler in samplers.values():
                sampler.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            for sampler in samplers.values():
                await asyncio.to_thread(sampler.wait, 60)
        profiles = {name: summarise(Path(scratch.name) / f"{name}.txt") for name in samplers}
    finally:
        await asyncio.to_thread(stack.__exit__, None, None, None)
        scratch.cleanup()
    return {
        **header("profile", pipeline=pipeline or "the default bot"),
        "conversations": conversations,
        "turns_per_conversation": turns,
        "concurrency": concurrency,
        "answered": len(latencies),
        "failures": failures,
        "sample_rate_hz": rate,
        "threads": "all not waiting" if all_threads else "the one holding the GIL",
        "profiles": profiles,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=300)
    parser.add_argument("--turns", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--rate", type=int, default=200, help="samples per second")
    parser.add_argument(
        "--default-bot", action="store_true", help="the default bot, not the built-in pipeline"
    )
    parser.add_argument(
        "--all-threads", action="store_true", help="every thread not waiting, not only the GIL's holder"
    )
    args = parser.parse_args()
    pipeline = default_bot() if args.default_bot else BUILT_IN_PIPELINE
    result = asyncio.run(
        run(args.conversations, args.turns, args.concurrency, args.rate, pipeline, args.all_threads)
    )
    RESULTS.mkdir(exist_ok=True)
    name = "profile-default-bot.json" if args.default_bot else "profile.json"
    (RESULTS / name).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
