"""Structured logs: one JSON object per line, each with the conversation, turn, tenant and trace it belongs to.

The ids come from context variables the API sets per request (`log_context`) and the worker sets
per activity (`dialogue.platform.telemetry`), and from the current OpenTelemetry span; so a line written
anywhere below a request or an activity carries them without being passed them.
Users' and the bot's words are not logged at INFO unless `log_message_text` is set.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING

from opentelemetry import trace
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

from dialogue.platform.temporal import key_of

if TYPE_CHECKING:
    from dialogue.platform.settings import Settings

_conversation: ContextVar[str | None] = ContextVar("conversation", default=None)
_turn: ContextVar[str | None] = ContextVar("turn", default=None)

_message_text = False

QUIET_LOGGERS = ("httpx", "httpx2")
"""Loggers that write what a request carried at INFO: held at WARNING."""


@contextmanager
def log_context(conversation_key: str | None, turn_id: str | None = None) -> Iterator[None]:
    """Lines logged inside carry this conversation (`tenant/id`) and turn."""
    conversation_token = _conversation.set(conversation_key)
    turn_token = _turn.set(turn_id)
    try:
        yield
    finally:
        _turn.reset(turn_token)
        _conversation.reset(conversation_token)


def message_text(text: str) -> str | None:
    """The text to put in an INFO line: None unless operators chose to log conversation content."""
    return text if _message_text else None


def current_trace_id() -> str | None:
    """The current span's trace id as 32 hex digits (what tracing back ends search by), if any."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


class ContextFilter(logging.Filter):
    """Adds `conversation_id`, `tenant`, `turn_id`, `trace_id` and `span_id` to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        key = _conversation.get()
        # Temporal's workflow and activity loggers attach the workflow's info, also to lines written
        # outside an activity's own context (the SDK's "Completing activity as failed" warning).
        temporal = getattr(record, "temporal_workflow", None) or getattr(record, "temporal_activity", None)
        if key is None and isinstance(temporal, dict):
            key = key_of(str(temporal.get("workflow_id", "")))
            if "update_id" in temporal:  # a turn's update: its id is the turn's
                record.turn_id = temporal["update_id"]
        if key is not None:
            tenant, _, conversation_id = key.partition("/")
            record.tenant = tenant
            record.conversation_id = conversation_id
        turn_id = _turn.get()
        if turn_id is not None:
            record.turn_id = turn_id
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id = format(context.trace_id, "032x")
            record.span_id = format(context.span_id, "016x")
        return True


def configure_logging(settings: Settings, service: str) -> None:
    """Root logging for a process (`service`: api, worker): JSON or text lines on stderr, at the set level."""
    global _message_text
    _message_text = settings.log_message_text
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    if settings.log_format == "json":
        handler.setFormatter(
            JsonFormatter(
                "{levelname}{name}{message}",
                style="{",
                timestamp="time",  # ISO 8601, UTC, with milliseconds
                rename_fields={"levelname": "level", "name": "logger"},
                static_fields={"service": service},
                # Temporal's loggers attach their whole info dict: the ids above say the same in less.
                reserved_attrs=[*RESERVED_ATTRS, "taskName", "temporal_workflow", "temporal_activity"],
            )
        )
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    # uvicorn's own access lines would repeat the API's request line without its ids.
    logging.getLogger("uvicorn.access").disabled = True
    # httpx (and the MCP SDK's httpx2) log every request's URL at INFO, query and all: a tool's arguments,
    # often personal data, would be in the log whatever `log_message_text` says.
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
