"""Turns while the knowledge base grows: the default bot under `dialogue up`, answering knowledge-base
questions one after another over real HTTP, first idle, then while `dialogue kb ingest` adds `--documents`
generated abstracts to the same store (every batch moves the knowledge revision; the worker rebuilds its
index beside the turns). Reported: turn latency p50/p99 idle and during the ingest, their ratio (the
target: within 1.5x), the ingest's documents/s beside the stack; for each index engine in `--index`
(`memory`: the worker rebuilds BM25 and its vector matrix at each revision; `store`: words searched in
the store, only the vector file written again), one after the other in one run. Results in
bench/results/kb_turns_during_ingest.json.

    .venv/bin/python -m bench.kb_turns_during_ingest [--documents 5000] [--idle-turns 60] [--index memory store]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

from bench.kb_ingest import write_corpus
from bench.stack import EmbeddedStack, default_bot
from bench.streaming import RESULTS, header, percentiles
from dialogue.apps.client import AsyncDialogueClient

QUESTIONS = [
    "How much does express shipping cost?",
    "How long does a refund take after I return an item?",
    "Do gift cards expire?",
    "Can I change my delivery address?",
]


async def timed_turns(
    dialogue: AsyncDialogueClient, run: str, count: int | None, until: asyncio.subprocess.Process | None
) -> list[float]:
    """Turns one after another (a new conversation every 10): their latencies in ms, `count` of them or
    as many as fit while `until` runs."""
    latencies: list[float] = []
    number = 0
    while (count is None or number < count) and (until is None or until.returncode is None):
        started = time.perf_counter()
        await dialogue.send_turn(f"{run}-{number // 10}", QUESTIONS[number % len(QUESTIONS)])
        latencies.append((time.perf_counter() - started) * 1000)
        number += 1
    return latencies


async def measure(documents: int, idle_turns: int, index: str) -> dict[str, object]:
    with (
        tempfile.TemporaryDirectory() as scratch,
        EmbeddedStack(**default_bot(), knowledge_index=index) as stack,
    ):
        corpus = Path(scratch) / "corpus"
        write_corpus(corpus, documents)
        async with AsyncDialogueClient(stack.api, stack.key, retry_for=120) as dialogue:
            await timed_turns(dialogue, "warm", 10, None)
            idle = await timed_turns(dialogue, "idle", idle_turns, None)
            began = time.perf_counter()
            ingest = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "dialogue",
                "kb",
                "ingest",
                str(corpus),
                env=stack.env,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            during = await timed_turns(dialogue, "during", None, ingest)
            await ingest.wait()
            took = time.perf_counter() - began
    idle_p = percentiles(idle)
    during_p = percentiles(during)
    return {
        "index": index,
        "documents": documents,
        "ingest_seconds": round(took, 1),
        "ingest_docs_per_s": round(documents / took, 1),
        "turns_idle": len(idle),
        "turns_during": len(during),
        "idle_ms": idle_p,
        "during_ms": during_p,
        "p50_ratio": round(during_p["p50"] / idle_p["p50"], 2),
        "p99_ratio": round(during_p["p99"] / idle_p["p99"], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--documents", type=int, default=5000)
    parser.add_argument("--idle-turns", type=int, default=60)
    parser.add_argument("--index", nargs="+", choices=["memory", "store"], default=["memory", "store"])
    parser.add_argument("--out", type=Path, default=RESULTS / "kb_turns_during_ingest.json")
    args = parser.parse_args()
    runs = [asyncio.run(measure(args.documents, args.idle_turns, index)) for index in args.index]
    result = header("kb_turns_during_ingest", bot="default", runs=runs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
