"""`StepLog`: what a turn's steps took and which of them failed, for the reply's timings and lineage."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from temporalio import workflow
from temporalio.exceptions import ActivityError, CancelledError, FailureError

T = TypeVar("T")


class StepLog:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        """Milliseconds per step, by the step's name."""
        self.failed: list[str] = []
        """Why the reply is degraded: each step that failed after its retries, or the deadline."""

    @property
    def degraded_reason(self) -> str | None:
        return ", ".join(self.failed) or None

    async def attempt(self, step: str, call: Awaitable[T], *, counts: bool = True) -> T | None:
        """Run one step; on failure after its retries, note it (unless it does not `count`: a step with a
        second way to the same result) and give None, so the turn can fall back."""
        start = workflow.time()
        evicted = False
        try:
            return await call
        except GeneratorExit:
            # The run left the worker's cache (evicted, its worker stopping): nothing of it runs any more,
            # and the workflow's clock is gone with it.
            evicted = True
            raise
        except FailureError as err:
            # A regular activity's failure is an ActivityError around the cause; a local activity's may be
            # the cause itself (seen for a non-retryable error: the SDK's core does not always wrap it).
            cause = err.cause if isinstance(err, ActivityError) else err
            if isinstance(cause, CancelledError):
                # Cancelled by the turn's deadline, not failed: let the cancellation reach the deadline.
                raise asyncio.CancelledError from err
            workflow.logger.warning("step %s failed: %s", step, cause or err)
            if counts:
                self.failed.append(f"{step} failed")
            return None
        finally:
            if not evicted:
                self.timings[step] = ms(workflow.time() - start)

    def time(self, step: str, since: float) -> None:
        self.timings[step] = ms(workflow.time() - since)


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)
