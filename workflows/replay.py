"""Replay a conversation's recorded history against the current workflow code.

A replay re-runs the workflow code over the events Temporal recorded, without
running any activity. It fails if the code would now make different decisions:
the check to run before deploying a change, and a way to step through what
happened in a debugger.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from temporalio.client import Client, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer, WorkflowReplayResult

from dialogue.temporal import workflow_id
from workflows.conversation import ConversationWorkflow


async def load_history(
    conversation_id: str, *, client: Client | None = None, history_file: Path | None = None
) -> WorkflowHistory:
    """The history from a JSON export (Web UI or `temporal workflow show --output json`), or from the server."""
    if history_file is not None:
        exported = await asyncio.to_thread(history_file.read_text)
        return WorkflowHistory.from_json(workflow_id(conversation_id), exported)
    if client is None:
        raise ValueError("give a client or a history file")
    return await client.get_workflow_handle(workflow_id(conversation_id)).fetch_history()


async def load_runs(conversation_id: str, client: Client) -> list[WorkflowHistory]:
    """The history of every run of the conversation (continue-as-new starts a new one), oldest first."""
    workflow = workflow_id(conversation_id)
    runs = [execution async for execution in client.list_workflows(f"WorkflowId = '{workflow}'")]
    runs.sort(key=lambda execution: execution.start_time)
    if not runs:  # the visibility store lags a new workflow a little: the latest run is always there
        return [await client.get_workflow_handle(workflow).fetch_history()]
    return [await client.get_workflow_handle(workflow, run_id=run.run_id).fetch_history() for run in runs]


_DIVERGED_AT = re.compile(r"HistoryEvent\(id: (\d+), (\w+)\)")


def divergence(failure: Exception) -> str:
    """Where a replay diverged from its history, as readable as the SDK's message allows."""
    found = _DIVERGED_AT.search(str(failure))
    where = f"at event {found.group(1)} ({found.group(2)}): " if found else ""
    return f"{where}{type(failure).__name__}: {failure}"


async def replay(history: WorkflowHistory) -> WorkflowReplayResult:
    replayer = Replayer(workflows=[ConversationWorkflow], data_converter=pydantic_data_converter)
    return await replayer.replay_workflow(history, raise_on_replay_failure=False)
