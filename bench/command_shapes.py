"""Workflows for bench/command_costs.py: an update whose workflow task records a given mix of commands.

Only temporalio is imported here: the workflow sandbox re-imports this module.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import activity, workflow
from temporalio.common import SearchAttributeKey

LOCAL = timedelta(seconds=10)
RESULT_BYTES = 3000
"""About what a turn's `respond_here` result weighs (understanding, passages, reply) as JSON."""
INTENT = SearchAttributeKey.for_keyword("DialogueLastIntent")
COUNT = SearchAttributeKey.for_int("DialogueTurnCount")
DEGRADED = SearchAttributeKey.for_int("DialogueDegradedCount")


@activity.defn
async def sized(text: str) -> str:
    return text * (RESULT_BYTES // max(len(text), 1))


@workflow.defn
class CommandShape:
    """Each `turn` update records `shape`'s commands: `la` local activities of ~3 KB results, `sa`
    search-attribute upserts, and on the workflow's first update `patches` patch markers."""

    @workflow.init
    def __init__(self, shape: dict[str, int]) -> None:
        self._shape = shape
        self._done = False
        self._first = True

    @workflow.run
    async def run(self, shape: dict[str, int]) -> None:
        await workflow.wait_condition(lambda: self._done)

    @workflow.update
    async def turn(self, text: str) -> int:
        if self._first:
            self._first = False
            for number in range(self._shape.get("patches", 0)):
                workflow.patched(f"shape-{number}")
        for _ in range(self._shape.get("la", 0)):
            text = (await workflow.execute_local_activity(sized, text, start_to_close_timeout=LOCAL))[:8]
        self._count = getattr(self, "_count", 0) + 1
        for _ in range(self._shape.get("sa", 0)):
            workflow.upsert_search_attributes(
                [INTENT.value_set(text[:8]), COUNT.value_set(self._count), DEGRADED.value_set(0)]
            )
        return self._count
