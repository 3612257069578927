"""The cost of the conversation in an LLM turn: a turn with 20 earlier turns beside one with none, and
one 200 turns into a conversation, measured round by round on one `dialogue up` stack; and the history
a turn leaves in Temporal.

The model is an OpenAI-compatible stand-in on loopback answering after a fixed delay, so what differs
between the three is the context: reading the transcript from the store, counting tokens, assembling
the messages (and the bigger request). The workflow's own timing of the `generate` step is compared.

    .venv/bin/python -m bench.llm_context [--rounds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import uuid
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from temporalio.client import Client

from bench.stack import EmbeddedStack, free_port
from bench.streaming import header, percentiles
from tests.fake_llm import FakeLlm, Plan

ANSWER = "Express shipping costs 12.90 euros and arrives on the next working day [1]."
MODEL_DELAY = 0.05
RESULTS = Path(__file__).parent / "results"
QUESTIONS = [
    json.loads(line)["question"]
    for line in (Path(__file__).parent.parent / "examples" / "demo" / "qa.jsonl").read_text().splitlines()
]
"""The demo's knowledge questions; `answered_by_the_model` keeps those the bot answers with the LLM (not
one that starts the order flow or asks for a person, after which a conversation gets no LLM answers)."""


async def turn(http: httpx.AsyncClient, conversation: str, text: str) -> dict[str, Any]:
    response = await http.post(f"/v1/conversations/{conversation}/turns", json={"text": text})
    response.raise_for_status()
    reply: dict[str, Any] = response.json()
    return reply


async def answered_by_the_model(http: httpx.AsyncClient, run_id: str) -> list[str]:
    kept = []
    for n, question in enumerate(QUESTIONS):
        reply = await turn(http, f"probe-{run_id}-{n}", question)
        if reply["nlu"]["action"] == "answer" and reply["reply"]["generator"].startswith("openai:"):
            kept.append(question)
    return kept


async def talk(http: httpx.AsyncClient, conversation: str, questions: list[str], turns: int) -> None:
    for n in range(turns):
        await turn(http, conversation, questions[n % len(questions)])


def generate_ms(reply: dict[str, Any]) -> float | None:
    """The workflow's time for the `generate` step, when the LLM was called (else None)."""
    if not reply["reply"]["generator"].startswith("openai:") or not (reply["lineage"] or {}).get("context"):
        return None
    return float(reply["timings_ms"]["generate"])


async def history_bytes(temporal: str, workflow_id: str) -> dict[str, Any]:
    """Bytes of the conversation's history in Temporal (payloads encrypted, as stored), and of the largest
    `generate` request in it (the context is read from the store inside the step, not sent through it)."""
    client = await Client.connect(temporal)
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    generate = [
        e.ByteSize()
        for e in history.events
        if e.HasField("activity_task_scheduled_event_attributes")
        and e.activity_task_scheduled_event_attributes.activity_type.name == "generate"
    ]
    return {
        "events": len(history.events),
        "bytes": sum(e.ByteSize() for e in history.events),
        "largest_generate_request": max(generate, default=0),
    }


async def run(rounds: int) -> dict[str, Any]:
    port = free_port()
    model = FakeLlm(plans=[Plan(text=ANSWER, delay=MODEL_DELAY)])
    server = uvicorn.Server(uvicorn.Config(model.app(), host="127.0.0.1", port=port, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    stack = EmbeddedStack(
        generator="openai",
        llm_base_url=f"http://127.0.0.1:{port}/v1",
        llm_model="gpt-4o-mini",
        rate_limit_per_second="0",
    )
    try:
        await asyncio.to_thread(stack.__enter__)
        async with httpx.AsyncClient(base_url=stack.api, headers=stack.headers, timeout=60) as http:
            run_id = uuid.uuid4().hex[:6]
            prepared = [f"ctx20-{run_id}-{r}" for r in range(rounds)]
            long = f"ctx200-{run_id}"
            questions = await answered_by_the_model(http, run_id)
            for conversation in prepared:
                await talk(http, conversation, questions, 20)
            await talk(http, long, questions, 200)
            timings: dict[str, list[float]] = {"no_context": [], "context_20_turns": [], "turn_200_plus": []}
            turns: dict[str, list[float]] = {name: [] for name in timings}
            contexts: dict[str, list[int]] = {name: [] for name in timings}
            for r in range(rounds):
                question = questions[r % len(questions)]
                for name, conversation in (
                    ("no_context", f"fresh-{run_id}-{r}"),
                    ("context_20_turns", prepared[r]),
                    ("turn_200_plus", long),
                ):
                    reply = await turn(http, conversation, question)
                    step = generate_ms(reply)
                    if step is None:
                        continue
                    timings[name].append(step)
                    turns[name].append(float(reply["timings_ms"]["total"]))
                    context = reply["lineage"]["context"]
                    contexts[name].append(int(context["context_tokens"]))
            temporal = stack.env["DIALOGUE_TEMPORAL_ADDRESS"]
            sizes = await history_bytes(temporal, f"conv-default/{prepared[0]}")
    finally:
        await asyncio.to_thread(stack.__exit__, None, None, None)
        server.should_exit = True
        await serving
    p50 = {name: statistics.median(values) for name, values in timings.items() if values}
    assert set(p50) == set(timings), {name: len(values) for name, values in timings.items()}
    return {
        **header("llm_context"),
        "rounds": rounds,
        "model_delay_ms": MODEL_DELAY * 1000,
        "generate_step_ms": {
            name: percentiles(values) for name, values in timings.items() if len(values) > 1
        },
        "turn_total_ms": {name: percentiles(values) for name, values in turns.items() if len(values) > 1},
        "context_tokens_p50": {
            name: statistics.median(values) for name, values in contexts.items() if values
        },
        "added_by_20_turns_ms_p50": round(p50["context_20_turns"] - p50["no_context"], 1),
        "added_at_turn_200_ms_p50": round(p50["turn_200_plus"] - p50["no_context"], 1),
        "history_of_a_21_turn_conversation": sizes | {"bytes_per_turn": round(sizes["bytes"] / 21)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    result = asyncio.run(run(args.rounds))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "llm_context.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
