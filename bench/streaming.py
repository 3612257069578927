"""Streaming: the delay from a token produced (the `generate` activity receives it from the model)
to the token received by an SSE client, over real HTTP against `dialogue up`.

The model is an OpenAI-compatible stand-in on loopback writing one word every 20 ms. Each
event carries the Unix time it was produced; the client notes when it arrived. Both run on
this machine, so the clocks are the same clock.

    .venv/bin/python -m bench.streaming [--turns 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import uvicorn

from bench.stack import EmbeddedStack, free_port
from tests.fake_llm import FakeLlm, Plan

ANSWER = (
    "Express shipping costs 12.90 euros within the country and arrives on the next working day "
    "when you order before two in the afternoon [1]."
)
QUESTION = "How much does express shipping cost?"
RESULTS = Path(__file__).parent / "results"


async def streamed_turn(http: httpx.AsyncClient, conversation: str) -> tuple[list[float], float, float]:
    """One streamed turn: each token's delay (ms), time to the first token and to the final event (ms)."""
    delays: list[float] = []
    started = time.time()
    first_token = final = 0.0
    fields: dict[str, str] = {}
    url = f"/v1/conversations/{conversation}/turns"
    async with http.stream(
        "POST", url, json={"text": QUESTION}, headers={"Accept": "text/event-stream"}
    ) as reply:
        reply.raise_for_status()
        async for line in reply.aiter_lines():
            if line:
                name, _, value = line.partition(": ")
                fields[name] = value
                continue
            now = time.time()
            data = orjson.loads(fields.get("data", "{}"))
            if fields.get("event") == "token":
                delays.append((now - data["at"]) * 1000)
                first_token = first_token or now
            elif fields.get("event") == "final":
                final = now
            fields = {}
    return delays, (first_token - started) * 1000, (final - started) * 1000


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    cut = statistics.quantiles(ordered, n=100, method="inclusive")
    return {
        "p50": round(statistics.median(ordered), 1),
        "p90": round(cut[89], 1),
        "p99": round(cut[98], 1),
        "max": round(ordered[-1], 1),
        "n": len(ordered),
    }


async def run(turns: int, token_delay: float) -> dict[str, Any]:
    port = free_port()
    model = FakeLlm(plans=[Plan(text=ANSWER, token_delay=token_delay)])
    server = uvicorn.Server(uvicorn.Config(model.app(), host="127.0.0.1", port=port, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    stack = EmbeddedStack(generator="openai", llm_base_url=f"http://127.0.0.1:{port}/v1", llm_model="bench")
    try:
        await asyncio.to_thread(stack.__enter__)
        async with httpx.AsyncClient(base_url=stack.api, headers=stack.headers, timeout=60) as http:
            await streamed_turn(http, f"warm-{uuid.uuid4().hex[:6]}")
            delays: list[float] = []
            firsts: list[float] = []
            finals: list[float] = []
            for _ in range(turns):
                turn_delays, first, final = await streamed_turn(http, f"bench-{uuid.uuid4().hex[:8]}")
                delays += turn_delays
                firsts.append(first)
                finals.append(final)
    finally:
        await asyncio.to_thread(stack.__exit__, None, None, None)
        server.should_exit = True
        await serving
    return {
        **header("streaming"),
        "turns": turns,
        "model_token_interval_ms": token_delay * 1000,
        "token_produced_to_received_ms": percentiles(delays),
        "request_to_first_token_ms": percentiles(firsts),
        "request_to_final_event_ms": percentiles(finals),
    }


def header(scenario: str, **more: Any) -> dict[str, Any]:
    """What every result file starts with: the scenario, when, on what machine (and `more`)."""
    return {
        "scenario": scenario,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        **more,
    }


def machine() -> str:
    import os

    return f"{platform.machine()}, {os.cpu_count() or 0} CPUs, Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--token-delay", type=float, default=0.02, help="seconds between the model's tokens")
    args = parser.parse_args()
    result = asyncio.run(run(args.turns, args.token_delay))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "streaming.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
