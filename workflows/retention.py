"""`RetentionWorkflow`, started by a Temporal schedule: erase what the retention period has run out on.

The schedule (`dialogue-retention`) is created by the worker at start-up when the bot sets
`privacy.retention_days`; its runs, and what each erased, are in the Web UI like any workflow.
"""

from __future__ import annotations

import contextlib
from datetime import timedelta

from temporalio import workflow
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
)
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.retention import RetentionActivities
    from dialogue.model.contracts import RetentionReport

SCHEDULE_ID = "dialogue-retention"


@workflow.defn
class RetentionWorkflow:
    @workflow.run
    async def run(self) -> RetentionReport:
        return await workflow.execute_activity_method(
            RetentionActivities.purge_expired,
            start_to_close_timeout=timedelta(minutes=30),
            heartbeat_timeout=timedelta(minutes=2),
            # Until it succeeds: a store or Temporal outage delays the purge, and never fails the run
            # (the schedule skips its next runs while this one still retries).
            retry_policy=RetryPolicy(
                initial_interval=timedelta(seconds=5),
                maximum_interval=timedelta(minutes=5),
                maximum_attempts=0,
            ),
        )


async def ensure_retention_schedule(client: Client, task_queue: str, every: timedelta) -> None:
    """Create the retention schedule unless it exists (every worker calls this; the first one wins)."""
    with contextlib.suppress(ScheduleAlreadyRunningError):
        await client.create_schedule(
            SCHEDULE_ID,
            Schedule(
                action=ScheduleActionStartWorkflow(
                    RetentionWorkflow.run, id=SCHEDULE_ID, task_queue=task_queue
                ),
                spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=every)]),
                policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
            ),
        )
