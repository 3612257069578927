"""Every step's activity options, in one table, with the reason beside each.

The rule: a step the user waits for is bounded, and its failure is a degraded reply; a step whose effect
must happen (recording) is never given up, and its failure never reaches the user or ends the
conversation. Nothing the workflow awaits may fail the workflow.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar, overload

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from dialogue.model.contracts import UNRECORDABLE

T = TypeVar("T")
A = TypeVar("A")
S = TypeVar("S")


def step_options(
    timeout_s: float, total_s: float, attempts: int, heartbeat_s: float | None = None
) -> dict[str, Any]:
    """Activity options: each attempt bounded, retries with exponential backoff, the whole bounded too."""
    return {
        **({"heartbeat_timeout": timedelta(seconds=heartbeat_s)} if heartbeat_s else {}),
        "start_to_close_timeout": timedelta(seconds=timeout_s),
        "schedule_to_close_timeout": timedelta(seconds=total_s),
        "retry_policy": RetryPolicy(
            initial_interval=timedelta(milliseconds=200),
            backoff_coefficient=2.0,
            maximum_interval=timedelta(seconds=2),
            maximum_attempts=attempts,
        ),
    }


# Turn steps: each attempt bounded, the whole step too, and never past the turn's deadline
# (`within_deadline`): past it the user gets the fallback, marked `degraded`.
UNDERSTAND = step_options(timeout_s=5, total_s=10, attempts=3)
RETRIEVE = step_options(timeout_s=5, total_s=10, attempts=3)
# Generation heartbeats: a lost worker is noticed in seconds, and a cancellation (deadline, interrupt)
# reaches the LLM call instead of letting it run on.
GENERATE = step_options(timeout_s=20, total_s=30, attempts=3, heartbeat_s=5)
COMPOSE = step_options(timeout_s=5, total_s=10, attempts=3)
RESPOND_HERE = step_options(timeout_s=10, total_s=15, attempts=2)
TOOL = step_options(timeout_s=10, total_s=20, attempts=3)
# Folding older turns into the rolling summary: an LLM call like generate's, but after the reply, never in
# the user's way. Failing after its retries leaves the verbatim window (older turns dropped, noted in lineage).
SUMMARIZE = step_options(timeout_s=20, total_s=30, attempts=3)
# The model's notes of a turn for the user's memory: after the reply; failing, the turn is not noted.
NOTE_MEMORY = step_options(timeout_s=20, total_s=30, attempts=3)
# One model step of the agent: an LLM call like generate's, within the turn's deadline. A tool call's options
# come from its declaration (timeout, attempts), cut to the deadline too (`tool_call_options`).
AGENT_STEP = step_options(timeout_s=20, total_s=30, attempts=3, heartbeat_s=5)
LIST_MCP_TOOLS = step_options(timeout_s=15, total_s=15, attempts=1)
# Making a follow-up standalone with the LLM, before retrieval: short; failing, the heuristic stands in.
REWRITE = step_options(timeout_s=5, total_s=8, attempts=2)
# Recording, inside the turn: one try, bounded just above SQLite's busy timeout (dialogue/platform/db.py). A write the
# store cannot take now is kept in the workflow's state and written later (`Recorder`): the reply
# does not wait for the store, and is not degraded for it.
RECORD_INLINE = step_options(timeout_s=11, total_s=11, attempts=1)
# Recording later, and the conversation's own row at its start and end: retried until the store takes it,
# backing off to one try every 30 s. No schedule-to-close: an outage of the store or of every worker,
# however long, only delays the transcript. Each attempt is bounded, so a worker that dies mid-write
# hands the write to another.
RECORD_UNTIL_DONE: dict[str, Any] = {
    "start_to_close_timeout": timedelta(seconds=15),
    "retry_policy": RetryPolicy(
        initial_interval=timedelta(milliseconds=500),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(seconds=30),
        maximum_attempts=0,  # unlimited
        non_retryable_error_types=[UNRECORDABLE],
    ),
}

# A message to the conversation's messaging platform: first one attempt inline, as a local activity (a
# platform that answers at once takes the reply without a round trip through the server's task queue),
# then, if that fails, the regular activity: each attempt bounded, retried with backoff to one a minute,
# without limit here; the activity itself ends it as a dead letter after its attempts
# (`activities.deliver.DELIVERY_ATTEMPTS`), or at once when the platform refuses it for good. A platform's
# rate limit sets the next attempt's delay itself (`next_retry_delay`).
DELIVER_INLINE = step_options(timeout_s=15, total_s=15, attempts=1)
DELIVER: dict[str, Any] = {
    "start_to_close_timeout": timedelta(seconds=30),
    "retry_policy": RetryPolicy(
        initial_interval=timedelta(seconds=1),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(seconds=60),
        maximum_attempts=0,
    ),
}


def tool_call_options(timeout_seconds: float, attempts: int) -> dict[str, Any]:
    """An agent's tool call: the tool's own timeout and attempts, from its declaration."""
    return step_options(timeout_s=timeout_seconds, total_s=timeout_seconds * attempts + 5, attempts=attempts)


DEADLINE_GRACE_SECONDS = 0.5
"""How long past the turn's deadline a step's own timeout falls: the deadline's timer, started with the step
(in the same workflow task), decides the turn, and its cancellation ends the step. A step timed out at the
very deadline raced the timer, and the user's fallback then said the step failed, not that time ran out."""


def within_deadline(options: dict[str, Any], deadline_seconds: float) -> dict[str, Any]:
    """A turn step's options, its budget cut to the turn's deadline (and DEADLINE_GRACE_SECONDS): nothing of a
    turn outlives it."""
    deadline = timedelta(seconds=deadline_seconds + DEADLINE_GRACE_SECONDS)
    return {
        **options,
        "start_to_close_timeout": min(options["start_to_close_timeout"], deadline),
        "schedule_to_close_timeout": min(options["schedule_to_close_timeout"], deadline),
    }


@overload
def run_step(
    local: bool, step: Callable[[S, A], Awaitable[T]], arg: A, options: dict[str, Any]
) -> Awaitable[T]: ...


@overload
def run_step(local: bool, step: Callable[[S, A], T], arg: A, options: dict[str, Any]) -> Awaitable[T]: ...


def run_step(local: bool, step: Callable[..., Any], arg: Any, options: dict[str, Any]) -> Awaitable[Any]:
    """A step as a local activity (inside the workflow task) or a regular one (through the task queue)."""
    if local:
        return workflow.execute_local_activity_method(step, arg, **options)
    return workflow.execute_activity_method(step, arg, **options)
