"""Erasing a conversation: its workflow histories in Temporal (every run) and its rows in the store; and
erasing an end user: each of their conversations so, then what the store holds of the user themself.

Used by `DELETE /v1/conversations/{id}`, `DELETE /v1/users/{user}` and the retention schedule. What remains
is an audit entry (who, when, which id, how many rows) and a tombstone row without content.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy.engine import Engine
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.workflowservice.v1 import DeleteWorkflowExecutionRequest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from dialogue.platform import memory, store
from dialogue.platform.temporal import key_of, user_query, workflow_id
from dialogue.security.identity import audit


async def erase_conversation(
    client: Client, engine: Engine, key: str, *, actor: str, reason: str, keep_owner: bool = False
) -> bool:
    """Erase the conversation with this key; False when neither Temporal nor the store knows it.
    `keep_owner`: as `store.erase_conversation`'s."""
    runs = await _run_ids(client, key)
    known = bool(runs) or await asyncio.to_thread(store.get_conversation, engine, key) is not None
    if not known:
        return False
    # The tombstone first: from now on the API refuses turns, and late writes of the worker are dropped.
    first = await asyncio.to_thread(
        store.erase_conversation, engine, key, datetime.now(UTC), keep_owner=keep_owner
    )
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
    late = await asyncio.to_thread(
        store.erase_conversation, engine, key, datetime.now(UTC), keep_owner=keep_owner
    )
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


@dataclass
class UserErasure:
    """What erasing an end user removed: the conversations (keys) and the store's rows of the user."""

    conversations: list[str] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)


async def erase_user(client: Client, engine: Engine, *, tenant: str, user: str, actor: str) -> UserErasure:
    """Erase every conversation of this end user's in `tenant` (recorded so in the store, or started so in
    Temporal: `DialogueUser`), their memory and consent, then the records of whose the conversations were. Those go last: an erasure stopped halfway (a dependency down) finds what is left when sent again.
    Idempotent; an audit entry names the user and counts, never the content."""
    erased = UserErasure()
    recorded = await asyncio.to_thread(store.conversations_of, engine, tenant=tenant, user=user)
    for key in [*recorded, *[key for key in await _started_by(client, tenant, user) if key not in recorded]]:
        await erase_conversation(client, engine, key, actor=actor, reason="user erased", keep_owner=True)
        erased.conversations.append(key)
    erased.rows |= await asyncio.to_thread(memory.erase_user, engine, tenant=tenant, user=user)
    erased.rows["owners"] = await asyncio.to_thread(store.forget_owners, engine, tenant=tenant, user=user)
    await asyncio.to_thread(
        audit,
        engine,
        tenant=tenant,
        actor=actor,
        action="erase_user",
        target=user,
        reason="requested",
        conversations=len(erased.conversations),
        **erased.rows,
    )
    return erased


async def _started_by(client: Client, tenant: str, user: str) -> list[str]:
    """The keys of the conversations Temporal knows as this end user's (`user_tag`, set at their start):
    also those whose first record never reached the store."""
    keys = {key_of(execution.id) async for execution in client.list_workflows(user_query(tenant, user))}
    return sorted(key for key in keys if key is not None)


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
