"""Replay a conversation's recorded history against the current workflow code.

A replay re-runs the workflow code over the events Temporal recorded, without
running any activity. It fails if the code would now make different decisions:
the check to run before deploying a change, and a way to step through what
happened in a debugger.
"""

from __future__ import annotations

import asyncio
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


async def replay(history: WorkflowHistory) -> WorkflowReplayResult:
    replayer = Replayer(workflows=[ConversationWorkflow], data_converter=pydantic_data_converter)
    return await replayer.replay_workflow(history, raise_on_replay_failure=False)
