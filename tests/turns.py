"""A client that does what the API asks of it, and what tests check of its turns.

A turn whose request failed or timed out is sent again with the same `Idempotency-Key`,
and gets the first request's reply instead of becoming a second turn.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.waiting import eventually

# What a client retries: Temporal unreachable (503), the reply not ready in time (504).
RETRYABLE_STATUSES = {503, 504}


@dataclass
class Turn:
    """One user turn as a retrying client sent it, and what it got back."""

    text: str
    key: str
    reply: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    """What each failed attempt saw: an HTTP status or a transport error."""
    seconds: float = 0.0
    answered_at: float = 0.0
    """`time.monotonic()` when the reply arrived."""


async def send_turn(
    http: httpx.AsyncClient, conversation_id: str, turn: Turn, *, attempt_timeout: float, total_timeout: float
) -> Turn:
    """POST the turn until it is answered, always with the same Idempotency-Key, backing off."""
    url = f"/v1/conversations/{conversation_id}/turns"
    started = time.monotonic()

    async def attempts() -> dict[str, Any]:
        delay = 0.2
        while True:
            try:
                response = await http.post(
                    url,
                    json={"text": turn.text},
                    headers={"Idempotency-Key": turn.key},
                    timeout=attempt_timeout,
                )
            except httpx.TransportError as err:  # includes the client's own time-out
                turn.failures.append(type(err).__name__)
            else:
                if response.status_code == 200:
                    body: dict[str, Any] = response.json()
                    return body
                assert response.status_code in RETRYABLE_STATUSES, response.text
                if response.status_code == 503:
                    assert response.headers["retry-after"]
                turn.failures.append(str(response.status_code))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    turn.reply = await asyncio.wait_for(attempts(), total_timeout)
    turn.answered_at = time.monotonic()
    turn.seconds = turn.answered_at - started
    assert turn.reply["turn_id"] == turn.key
    return turn


async def assert_transcript_once(http: httpx.AsyncClient, conversation_id: str, turns: list[Turn]) -> None:
    """The transcript holds each turn, its user text and the reply the client got, once and in order."""
    response = await http.get(f"/v1/conversations/{conversation_id}/messages", params={"limit": 200})
    assert response.status_code == 200, response.text
    page = response.json()
    expected = []
    for index, turn in enumerate(turns):
        assert turn.reply["turn_index"] == index
        expected.append((index, "user", turn.key, turn.text))
        expected.append((index, "bot", turn.key, turn.reply["reply"]["text"]))
    assert [(m["turn_index"], m["role"], m["turn_id"], m["text"]) for m in page["items"]] == expected
    assert page["total"] == len(expected)


async def wait_until(check: Callable[[], bool], what: str, within: float = 15) -> None:
    """Until `check()` holds (`tests.waiting.eventually`, for a plain check)."""
    await eventually(check, what, within=within)
