"""The agent's orchestration cost: an agent turn of three tool calls (four model calls, three tool calls,
each its own Temporal activity) on a `dialogue up` stack, beside the same model and the same tool called
by a plain Python loop in this process, round by round in one run.

The model is an OpenAI-compatible stand-in on loopback that answers after MODEL_DELAY: it asks for the
order-status tool until it has three results, then answers. Both sides send it the same kind of request
through the same client code; what differs is what Dialogue Engine adds around each step (activities,
workflow tasks, the context read from the store, the checks, lineage). The workflow's own timing of the
agent's loop (`timings_ms.agent`) is compared with the plain loop's.

    .venv/bin/python -m bench.agent_loop [--rounds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import uvicorn

from bench.stack import EmbeddedStack, free_port
from bench.streaming import header, percentiles
from dialogue.brain.agent.declarations import offered, openai_tools, shown, step_messages
from dialogue.brain.generation.openai_chat import ChatClient
from dialogue.brain.python_tools import CallContext, flow_tools
from dialogue.model.contracts import AgentStepRecord, AgentToolCall, AgentToolOutcome
from dialogue.platform.bot import load_bot
from dialogue.platform.settings import Settings
from tests.fake_llm import FakeLlm, Plan

MODEL_DELAY = 0.05
CALLS = 3
STEPS = 2 * CALLS + 1
"""Model calls (one per tool call, and the answer) and tool calls of one agent turn."""
ORDERS = ["NW-482913", "NW-105733", "NW-654321"]
QUESTION = "where are my orders NW-482913, NW-105733 and NW-654321?"
RESULTS = Path(__file__).parent / "results"


def stand_in_model() -> FakeLlm:
    def plan(body: dict[str, Any]) -> Plan:
        done = sum(1 for message in body["messages"] if message["role"] == "tool")
        if "tools" not in body or done >= CALLS:
            return Plan(text="All three orders are on their way.", delay=MODEL_DELAY)
        return Plan(tool_calls=[("order_status", {"order_id": ORDERS[done]})], delay=MODEL_DELAY)

    return FakeLlm(route=plan)


async def plain_loop(client: ChatClient, bot_tools: list[dict[str, Any]], bot: Any) -> float:
    """The same turn with no durability: the model, the tool in-process, the model again. Milliseconds."""
    order_status = flow_tools(bot)["order_status"]  # the demo's function, from examples/demo/shop.py
    started = time.perf_counter()
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are the support assistant of an online shop."},
        {"role": "user", "content": QUESTION},
    ]
    steps: list[AgentStepRecord] = []
    for _ in range(CALLS + 1):
        completion = await client.complete(
            [*messages, *step_messages(steps)], max_tokens=300, temperature=0.2, tools=bot_tools
        )
        if not completion.tool_calls:
            break
        calls = [
            AgentToolCall(call_id=call.id, name=call.name, arguments=orjson.loads(call.arguments))
            for call in completion.tool_calls
        ]
        outcomes = []
        for call in calls:
            seen = shown(order_status(CallContext(bot, "", Path("data")), call.arguments).data, 4000)
            outcomes.append(
                AgentToolOutcome(call_id=call.call_id, name=call.name, ok=True, content=seen.content)
            )
        steps.append(AgentStepRecord(calls=calls, outcomes=outcomes))
    return (time.perf_counter() - started) * 1000


async def run(rounds: int) -> dict[str, Any]:
    port = free_port()
    model = stand_in_model()
    server = uvicorn.Server(uvicorn.Config(model.app(), host="127.0.0.1", port=port, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    base_url = f"http://127.0.0.1:{port}/v1"
    stack = EmbeddedStack(
        generator="openai",
        llm_base_url=base_url,
        llm_model="gpt-4o-mini",
        rate_limit_per_second="0",
        flags=json.dumps({"agent": True}),
    )
    bot = load_bot(Settings(api_key="unused").bot_path)
    bot_tools = openai_tools(offered(bot.agent, []))
    client = ChatClient(base_url=base_url, model="gpt-4o-mini", api_key=None, timeout_seconds=30)
    agent: list[float] = []
    turns: list[float] = []
    plain: list[float] = []
    try:
        await asyncio.to_thread(stack.__enter__)
        async with httpx.AsyncClient(base_url=stack.api, headers=stack.headers, timeout=60) as http:
            run_id = uuid.uuid4().hex[:6]
            for r in range(rounds + 2):  # two to warm up: the models, the MCP server's session
                response = await http.post(
                    f"/v1/conversations/agent-{run_id}-{r}/turns", json={"text": QUESTION}
                )
                response.raise_for_status()
                reply = response.json()
                calls = sum(len(step["calls"]) for step in (reply["lineage"] or {}).get("agent") or [])
                assert calls == CALLS and not reply["degraded"], reply
                loop_ms = await plain_loop(client, bot_tools, bot)
                if r >= 2:
                    agent.append(float(reply["timings_ms"]["agent"]))
                    turns.append(float(reply["timings_ms"]["total"]))
                    plain.append(loop_ms)
    finally:
        await asyncio.to_thread(stack.__exit__, None, None, None)
        server.should_exit = True
        await serving
    overhead = statistics.median(agent) - statistics.median(plain)
    return {
        **header("agent_loop"),
        "rounds": rounds,
        "model_delay_ms": MODEL_DELAY * 1000,
        "steps_per_turn": STEPS,
        "agent_loop_ms": percentiles(agent),
        "plain_python_loop_ms": percentiles(plain),
        "whole_turn_ms": percentiles(turns),
        "overhead_per_step_ms_p50": round(overhead / STEPS, 1),
        "ratio_p50": round(statistics.median(agent) / statistics.median(plain), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    result = asyncio.run(run(args.rounds))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "agent_loop.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
