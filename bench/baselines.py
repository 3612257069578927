"""The baseline for `bench/turn_latency.py`, run on the same Temporal as the real turns: what Temporal alone costs.

Only temporalio is imported here: the workflow sandbox re-imports this module.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import activity, workflow

STEP = timedelta(seconds=10)


@activity.defn
async def noop(text: str) -> str:
    return text


@workflow.defn
class BaselineTurn:
    """A turn of `steps` regular activities that do nothing, one after the other. With 0 steps, a bare
    update: Temporal's floor for a turn (one round trip into a workflow); with 3, a naive turn
    (understand, retrieve, generate): what scheduling the steps costs, without the work."""

    @workflow.init
    def __init__(self, steps: int) -> None:
        # Set before any handler runs: an update-with-start's turn may run before `run` does.
        self._steps = steps
        self._done = False

    @workflow.run
    async def run(self, steps: int) -> None:
        await workflow.wait_condition(lambda: self._done)

    @workflow.update
    async def turn(self, text: str) -> str:
        for _ in range(self._steps):
            text = await workflow.execute_activity(noop, text, start_to_close_timeout=STEP)
        return text

    @workflow.signal
    def end(self) -> None:
        self._done = True
