"""Broken conversations, found and brought back: `dialogue recover`, and the count `/metrics` shows.

A conversation is broken when the latest run of its workflow failed, was terminated, timed out
or was cancelled: it did not end, it stopped. The workflow code lets no step fail it (see the
rule beside the step table in `workflows/conversation/options.py`); what remains are bugs, an operator's
`terminate`, and runs recorded by older code.

Recovery resets the workflow to its last completed workflow task (Temporal's reset): a new run
starts from that point of the history, with the current code, and Temporal applies again the
turns sent after it. The transcript stays; a turn already answered is found by its idempotency
key as before. A turn whose reply was made in the task the reset redoes is made again (the same
for a template or grounded reply, possibly other words from an LLM; the transcript keeps the
newer). A workflow that never completed a task has nothing to keep: it starts again from its
original input.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import EventType, ResetReapplyType
from temporalio.api.workflowservice.v1 import ResetWorkflowExecutionRequest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import WorkflowIDReusePolicy

from dialogue.model.contracts import WORKFLOW_TYPE

BROKEN = {
    WorkflowExecutionStatus.FAILED: "failed",
    WorkflowExecutionStatus.TERMINATED: "terminated",
    WorkflowExecutionStatus.TIMED_OUT: "timed_out",
    WorkflowExecutionStatus.CANCELED: "canceled",
}
"""How a conversation's workflow can close other than by the conversation ending."""
BROKEN_QUERY = (
    f"WorkflowType = '{WORKFLOW_TYPE}' AND ("
    + " OR ".join(f"ExecutionStatus = '{name}'" for name in ("Failed", "Terminated", "TimedOut", "Canceled"))
    + ")"
)


@dataclass(frozen=True)
class Broken:
    workflow_id: str
    run_id: str
    status: str
    """`failed`, `terminated`, `timed_out` or `canceled`."""


@dataclass(frozen=True)
class Recovery:
    workflow_id: str
    outcome: str
    """What was done, in words for the operator."""
    run_id: str | None = None
    """The new run, when there is one."""


async def broken_conversations(client: Client, *, limit: int = 1000) -> list[Broken]:
    """Conversations whose latest run is broken (a recovered one is not: its latest run is the reset one)."""
    seen: set[str] = set()
    broken = []
    async for execution in client.list_workflows(BROKEN_QUERY, limit=limit):
        if execution.id in seen:
            continue
        seen.add(execution.id)
        latest = await client.get_workflow_handle(execution.id).describe()
        how = BROKEN.get(latest.status) if latest.status else None
        if how is not None:
            broken.append(Broken(execution.id, latest.run_id, how))
    return broken


async def recover(client: Client, workflow_id: str) -> Recovery:
    """Bring a broken conversation back: reset it to its last completed workflow task, or start it again
    from its input if it never completed one. A conversation that is not broken is left alone."""
    handle = client.get_workflow_handle(workflow_id)
    described = await handle.describe()
    how = BROKEN.get(described.status) if described.status else None
    if how is None:
        state = described.status.name.lower() if described.status else "unknown"
        return Recovery(workflow_id, f"not broken ({state}); nothing to do")
    history = await client.get_workflow_handle(workflow_id, run_id=described.run_id).fetch_history()
    completed = [
        event.event_id
        for event in history.events
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
    ]
    if completed:
        reset = await client.workflow_service.reset_workflow_execution(
            ResetWorkflowExecutionRequest(
                namespace=client.namespace,
                workflow_execution=WorkflowExecution(workflow_id=workflow_id, run_id=described.run_id),
                reason=f"dialogue recover: the workflow {how}",
                workflow_task_finish_event_id=completed[-1],
                request_id=str(uuid.uuid4()),
                # Turns and a person's actions sent after that task are applied again, in order.
                reset_reapply_type=ResetReapplyType.RESET_REAPPLY_TYPE_ALL_ELIGIBLE,
            )
        )
        return Recovery(
            workflow_id,
            f"was {how}; reset to its last completed workflow task (event {completed[-1]} of "
            f"{len(history.events)})",
            reset.run_id,
        )
    started = history.events[0].workflow_execution_started_event_attributes
    args = await client.data_converter.decode(started.input.payloads)
    restarted = await client.start_workflow(
        started.workflow_type.name,
        args=args,
        id=workflow_id,
        task_queue=started.task_queue.name,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
    )
    return Recovery(
        workflow_id, f"was {how} before completing a workflow task; started again", restarted.result_run_id
    )
