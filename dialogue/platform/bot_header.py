"""Which bot version an activity works for: the conversation workflow names it in a header of every
activity it schedules, and the worker's activities read it back (`answering_bot`).

A header rather than a field of each request: every step of a turn (understand, generate, a tool, the
agent) serves the conversation's version, and one interceptor says so for all of them, in the same way as
tracing carries its context. Headers are not part of the commands a replay compares, so histories
recorded before versions existed replay unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any

from temporalio import workflow
from temporalio.api.common.v1 import Payload
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
    StartActivityInput,
    StartLocalActivityInput,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
    WorkflowOutboundInterceptor,
)

BOT_HEADER = "dialogue-bot"
_answering: ContextVar[str | None] = ContextVar("dialogue_answering_bot", default=None)


def answering_bot() -> str | None:
    """`bot@version` of the conversation the running activity works for; None: the worker's own bot (a
    conversation started before versions, or an activity outside one)."""
    return _answering.get()


class BotHeaderInterceptor(Interceptor):
    """Puts the workflow's `bot_ref` on the activities it schedules, and makes it `answering_bot()` while
    each runs."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _ActivityInbound(next)

    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[WorkflowInboundInterceptor] | None:
        return _WorkflowInbound


class _ActivityInbound(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        header = input.headers.get(BOT_HEADER)
        # A thread-pool activity runs in a copy of this context: it sees the value too.
        token = _answering.set(header.data.decode() if header is not None else None)
        try:
            return await super().execute_activity(input)
        finally:
            _answering.reset(token)


class _WorkflowInbound(WorkflowInboundInterceptor):
    def init(self, outbound: WorkflowOutboundInterceptor) -> None:
        super().init(_WorkflowOutbound(outbound))


class _WorkflowOutbound(WorkflowOutboundInterceptor):
    def start_activity(self, input: StartActivityInput) -> workflow.ActivityHandle[Any]:
        input.headers = _with_bot(input.headers)
        return super().start_activity(input)

    def start_local_activity(self, input: StartLocalActivityInput) -> workflow.ActivityHandle[Any]:
        input.headers = _with_bot(input.headers)
        return super().start_local_activity(input)


def _with_bot(headers: Mapping[str, Payload]) -> Mapping[str, Payload]:
    ref = getattr(workflow.instance(), "bot_ref", None)
    if not isinstance(ref, str):
        return headers
    return {**headers, BOT_HEADER: Payload(metadata={"encoding": b"binary/plain"}, data=ref.encode())}
