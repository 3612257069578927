"""Baselines for `bench/turn_latency.py`, run on the same Temporal as the real turns: what Temporal alone costs.

Only temporalio is imported here: the workflow sandbox re-imports this module.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import activity, workflow

STEP = timedelta(seconds=10)


@workflow.defn
class BareUpdate:
    """An update that runs no activity: Temporal's floor for a turn (one round trip into a workflow)."""

    def __init__(self) -> None:
        self._done = False

    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: self._done)

    @workflow.update
    async def turn(self, text: str) -> str:
        return text

    @workflow.signal
    def end(self) -> None:
        self._done = True


@activity.defn
async def noop(text: str) -> str:
    return text


@workflow.defn
class NaiveTurn:
    """An update that runs three regular activities that do nothing (understand, retrieve, generate), one
    after the other: what scheduling the steps costs, without the work."""

    def __init__(self) -> None:
        self._done = False

    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: self._done)

    @workflow.update
    async def turn(self, text: str) -> str:
        for _ in range(3):
            text = await workflow.execute_activity(noop, text, start_to_close_timeout=STEP)
        return text

    @workflow.signal
    def end(self) -> None:
        self._done = True
