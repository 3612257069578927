"""Messaging platforms: what a turn through a platform's webhook costs over a turn through the API, and how
many replies a second the workers deliver to a platform, against `dialogue up` with a Telegram channel
whose Bot API is a stand-in on loopback (tests/platforms.py).

- `latency`: rounds alternate an API turn (`POST …/turns`, timed until its reply arrives) and a webhook
  turn (Telegram's `Update`, signed, timed until the reply reaches the stand-in's `sendMessage`), each in
  a new conversation (its first turn) and then the conversation's second turn. The added latency is the
  webhook's p50 minus the API's, side by side in one run.
- `burst`: N messages at once, each from its own chat, through the webhook, then N turns at once through
  the API, in new conversations: the webhook's replies delivered a second against the API's replies a second.
  A request the stack sheds (503, 429) is sent again after its `Retry-After`, as clients and platforms do.

    .venv/bin/python -m bench.channels [--rounds 100] [--burst 100]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from bench.stack import EmbeddedStack, default_bot
from bench.streaming import header, percentiles
from dialogue.apps.testing.stack import served
from tests.platforms import PlatformStandIn, channels, telegram_message

QUESTIONS = ["how much does express shipping cost?", "can I pay with PayPal?"]
RESULTS = Path(__file__).parent / "results"


async def api_turn(http: httpx.AsyncClient, conversation: str, text: str) -> float:
    started = time.monotonic()
    key = {"Idempotency-Key": uuid.uuid4().hex}
    await resent(
        lambda: http.post(f"/v1/conversations/{conversation}/turns", json={"text": text}, headers=key)
    )
    return (time.monotonic() - started) * 1000


async def resent(send: Callable[[], Awaitable[httpx.Response]]) -> httpx.Response:
    """Sent again after `Retry-After` while the stack sheds load (503, 429), as a client and a platform do."""
    while True:
        response = await send()
        if response.status_code not in (429, 503):
            response.raise_for_status()
            return response
        await asyncio.sleep(float(response.headers.get("retry-after", "1")))


async def webhook_turn(
    http: httpx.AsyncClient, platform: PlatformStandIn, chat: int, n: int, text: str
) -> float:
    """From the platform's request to the reply taken by the platform."""
    before = len(platform.sent)
    hook = telegram_message(text, message_id=n, chat_id=chat)
    started = time.monotonic()
    await resent(lambda: http.post(hook.path, content=hook.body, headers=hook.headers))
    await platform.until(before + 1)
    return (platform.sent[before].at - started) * 1000


async def burst(
    http: httpx.AsyncClient, hooks: httpx.AsyncClient, platform: PlatformStandIn, size: int
) -> dict[str, float]:
    before = len(platform.sent)
    chats = [random.randrange(10**9, 10**10) for _ in range(size)]
    started = time.monotonic()
    webhooks = [telegram_message(QUESTIONS[0], message_id=1, chat_id=chat) for chat in chats]
    await asyncio.gather(
        *(resent(functools.partial(hooks.post, h.path, content=h.body, headers=h.headers)) for h in webhooks)
    )
    await platform.until(before + size)
    webhook_span = platform.sent[-1].at - started
    started = time.monotonic()
    await asyncio.gather(
        *(api_turn(http, f"burst-{uuid.uuid4().hex[:10]}", QUESTIONS[0]) for _ in range(size))
    )
    api_span = time.monotonic() - started
    return {
        "messages": size,
        "webhook_replies_delivered_per_s": round(size / webhook_span, 1),
        "api_replies_per_s": round(size / api_span, 1),
        "ratio": round(api_span / webhook_span, 3),
    }


async def run(rounds: int, burst_size: int) -> dict[str, Any]:
    platform = PlatformStandIn()
    async with served(platform.app()) as url:
        stack = EmbeddedStack(
            channels=json.dumps({"shop-telegram": channels(url, "http://unused")["shop-telegram"]}),
            rate_limit_per_second="0",
            **default_bot(),
        )
        await asyncio.to_thread(stack.__enter__)
        try:
            async with httpx.AsyncClient(base_url=stack.api, headers=stack.headers, timeout=60) as http:
                hooks = httpx.AsyncClient(base_url=stack.api, timeout=60)
                times: dict[str, list[float]] = {
                    k: [] for k in ("api_first", "webhook_first", "api_next", "webhook_next")
                }
                for warm in range(3):
                    await api_turn(http, f"warm-{uuid.uuid4().hex[:8]}", QUESTIONS[0])
                    await webhook_turn(hooks, platform, random.randrange(10**9, 10**10), warm, QUESTIONS[0])
                for _ in range(rounds):
                    conversation, chat = f"bench-{uuid.uuid4().hex[:10]}", random.randrange(10**9, 10**10)
                    kinds = ["api", "webhook"]
                    random.shuffle(kinds)  # neither goes first every round
                    for kind in kinds:
                        for n, (turn, text) in enumerate(zip(("first", "next"), QUESTIONS, strict=True), 1):
                            took = (
                                await api_turn(http, conversation, text)
                                if kind == "api"
                                else await webhook_turn(hooks, platform, chat, n, text)
                            )
                            times[f"{kind}_{turn}"].append(took)
                bursted = await burst(http, hooks, platform, burst_size)
                await hooks.aclose()
        finally:
            await asyncio.to_thread(stack.__exit__, None, None, None)
    summary = {kind: percentiles(values) for kind, values in times.items()}
    return {
        **header("channels", rounds=rounds),
        "turn_ms": summary,
        "webhook_added_p50_ms": {
            "first_turn": round(summary["webhook_first"]["p50"] - summary["api_first"]["p50"], 1),
            "next_turn": round(summary["webhook_next"]["p50"] - summary["api_next"]["p50"], 1),
        },
        "burst": bursted,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--burst", type=int, default=100)
    args = parser.parse_args()
    result = asyncio.run(run(args.rounds, args.burst))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "channels.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
