"""Replay a conversation's recorded history against the current workflow code.

A replay re-runs the workflow code over the events Temporal recorded, without
running any activity. It fails if the code would now make different decisions:
the check to run before deploying a change, and a way to step through what
happened in a debugger.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter
from temporalio.worker import Replayer, WorkflowReplayResult

from dialogue.platform.temporal import workflow_id
from workflows.conversation import ConversationWorkflow


async def load_history(
    key: str, *, client: Client | None = None, history_file: Path | None = None
) -> WorkflowHistory:
    """The history of the conversation with this key (`dialogue.platform.temporal.conversation_key`), from a
    JSON export (Web UI or `temporal workflow show --output json`) or the server's latest run."""
    if history_file is not None:
        exported = await asyncio.to_thread(history_file.read_text)
        return WorkflowHistory.from_json(workflow_id(key), exported)
    if client is None:
        raise ValueError("give a client or a history file")
    return await client.get_workflow_handle(workflow_id(key)).fetch_history()


async def load_runs(key: str, client: Client) -> list[WorkflowHistory]:
    """The history of every run of the conversation (continue-as-new starts a new one), oldest first."""
    workflow = workflow_id(key)
    runs = [execution async for execution in client.list_workflows(f"WorkflowId = '{workflow}'")]
    runs.sort(key=lambda execution: execution.start_time)
    if not runs:  # the visibility store lags a new workflow a little: the latest run is always there
        return [await client.get_workflow_handle(workflow).fetch_history()]
    return [await client.get_workflow_handle(workflow, run_id=run.run_id).fetch_history() for run in runs]


# When the SDK's core names the event in its message: a mismatched command, or an inconsistent history.
_NAMED_EVENT = re.compile(r"HistoryEvent\(id: (\d+), (\w+)\)|event id: (\d+)")


async def divergence(
    history: WorkflowHistory, failure: Exception, converter: DataConverter = pydantic_data_converter
) -> str:
    """Where a replay diverged from its history: the event, then the SDK's message.

    The core names the event for some failures only; otherwise replaying ever longer
    prefixes of the history (a binary search over its workflow tasks) finds the first task
    whose decisions differ, and the first event those decisions were recorded as.
    """
    message = f"{type(failure).__name__}: {failure}"
    if found := _NAMED_EVENT.search(str(failure)):
        if found.group(1):
            return f"at event {found.group(1)} ({found.group(2)}): {message}"
        return f"at event {found.group(3)}: {message}"
    recorded = await _first_diverging_task(history, converter)
    if not recorded:
        return message
    # The core's message quotes what it compared ('an_older_step', 'understand'): the event that names it.
    quoted = re.findall(r"'([^']+)'", str(failure))
    event = next((e for e in recorded if any(q in str(e) for q in quoted)), recorded[0])
    return f"at event {event.event_id} ({EventType.Name(event.event_type).removeprefix('EVENT_TYPE_')}): {message}"


async def _first_diverging_task(history: WorkflowHistory, converter: DataConverter) -> list[HistoryEvent]:
    """The events that recorded the decisions of the first workflow task the code now decides differently."""
    events = history.events
    completed = [
        i for i, e in enumerate(events) if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
    ]

    def end_of(task: int) -> int:
        # Up to the next workflow task: the events that recorded this task's decisions are included.
        following = range(completed[task] + 1, len(events))
        scheduled = EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED
        return next((i for i in following if events[i].event_type == scheduled), len(events))

    async def fails_by(task: int) -> bool:
        prefix = WorkflowHistory(history.workflow_id, events[: end_of(task)])
        return (await replay(prefix, converter)).replay_failure is not None

    low, high, first = 0, len(completed) - 1, None
    while low <= high:
        middle = (low + high) // 2
        if await fails_by(middle):
            first, high = middle, middle - 1
        else:
            low = middle + 1
    if first is None:
        return []
    return list(events[completed[first] + 1 : end_of(first)])


async def replay(
    history: WorkflowHistory, converter: DataConverter = pydantic_data_converter
) -> WorkflowReplayResult:
    """Replay with the converter (and payload keys) the history was written with."""
    (result,) = await replay_all([history], converter)
    return result


async def replay_all(
    histories: list[WorkflowHistory], converter: DataConverter = pydantic_data_converter
) -> list[WorkflowReplayResult]:
    """Replay several histories (the runs of a conversation) with one replayer, in order."""
    replayer = Replayer(workflows=[ConversationWorkflow], data_converter=converter)

    async def each() -> AsyncIterator[WorkflowHistory]:
        for history in histories:
            yield history

    results = []
    async with replayer.workflow_replay_iterator(each()) as replayed:
        async for result in replayed:
            results.append(result)
    return results
