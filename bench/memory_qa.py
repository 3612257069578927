"""Two-conversation QA with and without memory: does a returning user's second conversation use what they
said in the first? On `dialogue up` with the demo bot, end to end over HTTP, as an integrator's server
talks for its signed-in customer (the demo's NWC-100001, who owns the orders the cases ask about).

Each case of examples/demo/qa_memory.jsonl: the turns of a first conversation, then those of a second
one; it passes when the second conversation's last reply holds every `expect` string and none of the
`absent` ones. Run twice, side by side case by case: with the user's consent (memory on) and without
(the same user, consent withdrawn: nothing is kept). Before each case the user's memory is emptied.

    .venv/bin/python -m bench.memory_qa
"""

from __future__ import annotations

import argparse
import json
import uuid
from pathlib import Path
from typing import Any

import httpx

from bench.stack import EmbeddedStack, default_bot
from bench.streaming import RESULTS, header

CASES = Path(__file__).parent.parent / "examples" / "demo" / "qa_memory.jsonl"
USER = "NWC-100001"


def turn(http: httpx.Client, conversation: str, text: str) -> str:
    answered = http.post(f"/v1/conversations/{conversation}/turns", json={"text": text})
    answered.raise_for_status()
    reply: str = answered.json()["reply"]["text"]
    return reply


def conversation(http: httpx.Client, texts: list[str]) -> str:
    """A new conversation of the user's; the last reply."""
    conversation_id = f"qa-{uuid.uuid4().hex[:10]}"
    http.post("/v1/conversations", json={"id": conversation_id, "user": USER}).raise_for_status()
    reply = ""
    for text in texts:
        reply = turn(http, conversation_id, text)
    return reply


def run_case(http: httpx.Client, case: dict[str, Any], remember: bool) -> dict[str, Any]:
    consent = f"/v1/users/{USER}/memory/consent"
    http.put(consent, json={"consented": False}).raise_for_status()  # forgets what the last case left
    if remember:
        http.put(consent, json={"consented": True}).raise_for_status()
    conversation(http, case["first"])
    reply = conversation(http, case["second"])
    passed = all(s in reply for s in case["expect"]) and not any(s in reply for s in case.get("absent", []))
    return {"id": case["id"], "passed": passed, "reply": reply}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=RESULTS / "memory_qa.json")
    args = parser.parse_args()
    cases = [json.loads(line) for line in CASES.read_text().splitlines() if line.strip()]
    results: dict[str, list[dict[str, Any]]] = {"with_memory": [], "without_memory": []}
    with (
        EmbeddedStack(rate_limit_per_second="0", **default_bot()) as stack,
        httpx.Client(
            base_url=stack.api, headers={"Authorization": f"Bearer {stack.key}"}, timeout=60
        ) as http,
    ):
        for number, case in enumerate(cases):
            # Alternate which mode goes first: neither always meets a warmer stack.
            modes = [True, False] if number % 2 == 0 else [False, True]
            for remember in modes:
                name = "with_memory" if remember else "without_memory"
                results[name].append(run_case(http, case, remember))
    summary = {
        name: {
            "passed": sum(r["passed"] for r in rows),
            "cases": len(rows),
            "rate": round(sum(r["passed"] for r in rows) / len(rows), 3),
            "failed": [r["id"] for r in rows if not r["passed"]],
        }
        for name, rows in results.items()
    }
    result = header("memory_qa", cases=str(CASES.name), summary=summary, results=results)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
