"""Erasing a conversation: its workflow histories in Temporal (every run) and its rows in the store.

Used by `DELETE /v1/conversations/{id}` and by the retention schedule. What remains is an
audit entry (who, when, which id, how many rows) and a tombstone row without content.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from sqlalchemy.engine import Engine
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.workflowservice.v1 import DeleteWorkflowExecutionRequest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from dialogue.platform import store
from dialogue.platform.temporal import workflow_id
from dialogue.security.identity import audit


async def erase_conversation(client: Client, engine: Engine, key: str, *, actor: str, reason: str) -> bool:
    """Erase the conversation with this key; False when neither Temporal nor the store knows it."""
    runs = await _run_ids(client, key)
    known = bool(runs) or await asyncio.to_thread(store.get_conversation, engine, key) is not None
    if not known:
        return False
    # The tombstone first: from now on the API refuses turns, and late writes of the worker are dropped.
    first = await asyncio.to_thread(store.erase_conversation, engine, key, datetime.now(UTC))
    for run_id in runs:
        # Deleting a running execution terminates it first; its history then goes with the others.
        try:
            await client.workflow_service.delete_workflow_execution(
                DeleteWorkflowExecutionRequest(
                    namespace=client.namespace,
                    workflow_execution=WorkflowExecution(workflow_id=workflow_id(key), run_id=run_id),
                )
            )
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND:
                raise
    # Again, now that nothing runs: rows written while the workflow was being deleted go too.
    late = await asyncio.to_thread(store.erase_conversation, engine, key, datetime.now(UTC))
    counts = {table: first[table] + late[table] for table in first}
    tenant = key.split("/", 1)[0]
    await asyncio.to_thread(
        audit,
        engine,
        tenant=tenant,
        actor=actor,
        action="erase",
        target=key,
        reason=reason,
        runs=len(runs),
        **counts,
    )
    return True


async def _run_ids(client: Client, key: str) -> list[str]:
    """Every run of the conversation's workflow: the visibility list, and the latest run it may lag behind."""
    workflow = workflow_id(key)
    runs = {execution.run_id async for execution in client.list_workflows(f"WorkflowId = '{workflow}'")}
    try:
        latest = await client.get_workflow_handle(workflow).describe()
        runs.add(latest.run_id)
    except RPCError as err:
        if err.status != RPCStatusCode.NOT_FOUND:
            raise
    return sorted(runs)
