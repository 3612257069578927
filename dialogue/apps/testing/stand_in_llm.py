"""A small OpenAI-compatible Chat Completions server for tests: real HTTP, real SSE streaming, tool calls
streamed as real endpoints do.

It stands in for a paid LLM provider only: in the test suite and in conversation tests (`dialogue test`)
whose `llm:` scripts what the model says. Each request takes the next planned behaviour
from a queue (the last one repeats); every request is recorded.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse


@dataclass
class Plan:
    text: str = ""
    status: int = 200
    delay: float = 0.0
    """Seconds to wait before answering: a slow model."""
    headers: dict[str, str] = field(default_factory=dict)
    token_delay: float = 0.0
    """Seconds between streamed tokens: a model that writes as it thinks."""
    error: str = ""
    """The error message of a planned failure (`status` other than 200)."""
    tool_calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    """Tools the model asks to call, (name, arguments), streamed as real endpoints do: `tool_calls` deltas
    whose arguments arrive in pieces, several calls in one response, `finish_reason: tool_calls`."""
    call_ids: list[str] = field(default_factory=list)
    """The ids the model gives those calls (by position; unset: `call_r<request>_<n>`): a model that repeats
    an id, or names one it saw before."""


@dataclass
class FakeLlm:
    plans: list[Plan] = field(default_factory=lambda: [Plan(text="Hello [1].")])
    requests: list[dict[str, Any]] = field(default_factory=list)
    route: Callable[[dict[str, Any]], Plan | None] | None = None
    """Picks the plan for a request by its content (None: the queue's next), e.g. summaries apart."""

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def complete(request: Request) -> Response:
            body = await request.json()
            self.requests.append(body)
            routed = self.route(body) if self.route is not None else None
            plan = routed or (self.plans.pop(0) if len(self.plans) > 1 else self.plans[0])
            await asyncio.sleep(plan.delay)
            if plan.status != 200:
                message = plan.error or f"planned {plan.status}"
                error = {"error": {"message": message, "type": "test", "code": None}}
                return JSONResponse(error, status_code=plan.status, headers=plan.headers)
            if not body.get("stream"):
                return JSONResponse(_completion(body["model"], plan.text))
            usage = (body.get("stream_options") or {}).get("include_usage", False)
            return StreamingResponse(
                _chunks(
                    body["model"],
                    plan.text,
                    plan.token_delay,
                    usage=usage,
                    tool_calls=plan.tool_calls,
                    call_prefix=f"r{len(self.requests)}",
                    call_ids=plan.call_ids,
                ),
                media_type="text/event-stream",
            )

        return app


def _completion(model: str, text: str) -> dict[str, Any]:
    return {
        "id": "cmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
    }


async def _chunks(
    model: str,
    text: str,
    token_delay: float = 0.0,
    *,
    usage: bool = False,
    tool_calls: list[tuple[str, dict[str, Any]]] | None = None,
    call_prefix: str = "r",
    call_ids: list[str] | None = None,
) -> AsyncIterator[bytes]:
    words = text.split(" ") if text else []
    for i, word in enumerate(words):
        if i and token_delay:
            await asyncio.sleep(token_delay)
        piece = word if i == len(words) - 1 else word + " "
        chunk = {
            "id": "cmpl-test",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": model,
            "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}],
        }
        yield b"data: " + orjson.dumps(chunk) + b"\n\n"
    for index, (name, arguments) in enumerate(tool_calls or []):
        encoded = orjson.dumps(arguments).decode()
        pieces = [encoded[i : i + 7] for i in range(0, len(encoded), 7)] or [""]
        for n, piece in enumerate(pieces):
            call: dict[str, Any] = {"index": index, "function": {"arguments": piece}}
            if n == 0:  # the first delta of a call names it; the arguments follow in pieces
                call |= {
                    "id": (call_ids or [])[index]
                    if index < len(call_ids or [])
                    else f"call_{call_prefix}_{index}",
                    "type": "function",
                    "function": {"name": name, "arguments": piece},
                }
            delta = (
                {"role": "assistant", "tool_calls": [call]}
                if n == 0 and index == 0 and not words
                else {"tool_calls": [call]}
            )
            chunk = {
                "id": "cmpl-test",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
            }
            yield b"data: " + orjson.dumps(chunk) + b"\n\n"
    done = {
        "id": "cmpl-test",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls" if tool_calls else "stop"}],
    }
    yield b"data: " + orjson.dumps(done) + b"\n\n"
    if usage:  # as OpenAI does with stream_options.include_usage: a last chunk with no choices
        counts = {"prompt_tokens": 100, "completion_tokens": len(words), "total_tokens": 100 + len(words)}
        last = {**done, "choices": [], "usage": counts}
        yield b"data: " + orjson.dumps(last) + b"\n\n"
    yield b"data: [DONE]\n\n"
