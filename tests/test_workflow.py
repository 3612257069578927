"""ConversationWorkflow against the real dev server and a real worker."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from temporalio.api.enums.v1 import EventType
from temporalio.client import (
    Client,
    WithStartWorkflowOperation,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ApplicationError
from temporalio.worker import Replayer, Worker

from dialogue import store
from dialogue.db import get_engine
from dialogue.settings import Settings
from dialogue.temporal import LAST_INTENT, TURN_COUNT, workflow_id
from workflows.contracts import ConversationInput, EndRequest, TurnReply, TurnRequest
from workflows.conversation import FALLBACK_TEXT, INVALID_TURN, ConversationWorkflow


async def send_turn(
    client: Client, settings: Settings, conversation_id: str, text: str, **overrides: Any
) -> TurnReply:
    start = WithStartWorkflowOperation(
        ConversationWorkflow.run,
        ConversationInput(conversation_id=conversation_id, **overrides),
        id=workflow_id(conversation_id),
        task_queue=settings.task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )
    reply: TurnReply = await client.execute_update_with_start_workflow(
        ConversationWorkflow.turn, TurnRequest(text=text), start_workflow_operation=start
    )
    return reply


async def events(handle: WorkflowHandle[Any, Any]) -> list[Any]:
    return [event async for event in handle.fetch_history_events()]


def activity_types(history: list[Any]) -> list[str]:
    return [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in history
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]


def new_id() -> str:
    return f"wf-{uuid.uuid4().hex[:10]}"


async def test_a_turn_runs_every_step_and_is_recorded(
    client: Client, settings: Settings, worker: Worker
) -> None:
    conversation_id = new_id()
    reply = await send_turn(client, settings, conversation_id, "How long does express shipping take?")

    assert reply.turn_index == 0
    assert reply.nlu.intent.name == "shipping"
    assert reply.reply.sources and reply.reply.sources[0].document_id == "shipping"
    assert not reply.degraded
    assert {"understand", "retrieve", "generate", "record", "total"} <= reply.timings_ms.keys()

    handle = client.get_workflow_handle_for(ConversationWorkflow.run, workflow_id(conversation_id))
    history = await events(handle)
    assert set(activity_types(history)) == {
        "record_conversation",
        "understand",
        "retrieve",
        "generate",
        "record_turn",
    }
    # Payloads are readable JSON in history (and so in the Web UI), not opaque bytes.
    scheduled = next(
        e
        for e in history
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        and e.activity_task_scheduled_event_attributes.activity_type.name == "understand"
    )
    payload = scheduled.activity_task_scheduled_event_attributes.input.payloads[0]
    assert payload.metadata["encoding"] == b"json/plain"
    assert b"express shipping" in payload.data

    described = await handle.describe()
    assert described.typed_search_attributes.get(LAST_INTENT) == "shipping"
    assert described.typed_search_attributes.get(TURN_COUNT) == 1

    rows, total = store.read_messages(
        get_engine(settings.resolved_database_url), conversation_id, limit=10, offset=0
    )
    assert total == 2
    assert rows[0].turn_id == reply.turn_id


async def test_concurrent_turns_run_one_at_a_time_in_arrival_order(
    client: Client, settings: Settings, worker: Worker
) -> None:
    conversation_id = new_id()
    await send_turn(client, settings, conversation_id, "hello")
    replies = await asyncio.gather(
        *(send_turn(client, settings, conversation_id, f"question {i} about returns") for i in range(5))
    )
    assert sorted(r.turn_index for r in replies) == [1, 2, 3, 4, 5]

    history = await events(
        client.get_workflow_handle_for(ConversationWorkflow.run, workflow_id(conversation_id))
    )
    accepted = [
        e.workflow_execution_update_accepted_event_attributes.accepted_request.meta.update_id
        for e in history
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED
    ]
    index_of = {r.turn_id: r.turn_index for r in replies}
    assert [index_of[u] for u in accepted[1:]] == [1, 2, 3, 4, 5]  # arrival order is turn order
    # One at a time: every turn's steps are scheduled only after the previous turn was recorded.
    steps = [t for t in activity_types(history) if t in ("understand", "record_turn")]
    assert steps == ["understand", "record_turn"] * 6


async def test_bad_turns_are_rejected_before_entering_history(
    client: Client, settings: Settings, worker: Worker
) -> None:
    conversation_id = new_id()
    await send_turn(client, settings, conversation_id, "hello", max_text_chars=20)
    for text in ["   ", "x" * 21]:
        with pytest.raises(WorkflowUpdateFailedError) as raised:
            await send_turn(client, settings, conversation_id, text, max_text_chars=20)
        assert isinstance(raised.value.cause, ApplicationError)
        assert raised.value.cause.type == INVALID_TURN

    handle = client.get_workflow_handle_for(ConversationWorkflow.run, workflow_id(conversation_id))
    history = await events(handle)
    accepted = [e for e in history if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED]
    assert len(accepted) == 1
    assert (await handle.query(ConversationWorkflow.state)).turn_count == 1


async def test_end_closes_the_conversation_and_records_it(
    client: Client, settings: Settings, worker: Worker
) -> None:
    conversation_id = new_id()
    await send_turn(client, settings, conversation_id, "hello")
    handle = client.get_workflow_handle_for(ConversationWorkflow.run, workflow_id(conversation_id))
    await handle.signal(ConversationWorkflow.end, EndRequest(reason="user_left"))

    final = await handle.result()
    assert (final.status, final.ended_reason, final.turn_count) == ("ended", "user_left", 1)
    assert (
        await handle.query(ConversationWorkflow.state)
    ).status == "ended"  # a closed workflow still answers
    row = store.get_conversation(get_engine(settings.resolved_database_url), conversation_id)
    assert row is not None and (row.status, row.ended_reason) == ("ended", "user_left")


async def test_an_idle_conversation_ends_itself(client: Client, settings: Settings, worker: Worker) -> None:
    conversation_id = new_id()
    await send_turn(client, settings, conversation_id, "hello", idle_timeout_seconds=1)
    final = await asyncio.wait_for(
        client.get_workflow_handle_for(ConversationWorkflow.run, workflow_id(conversation_id)).result(), 30
    )
    assert (final.status, final.ended_reason) == ("ended", "idle_timeout")


@pytest.fixture
def broken_bot(tmp_path: Path, settings: Settings) -> Settings:
    """The demo bot with an answer template that cannot be rendered: generation fails for real."""
    definition = yaml.safe_load(settings.bot_path.read_text())
    definition["answer_template"] = "Found: {missing_field}"
    definition["knowledge_dir"] = str(settings.bot_path.parent / "knowledge")
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(definition))
    return settings.model_copy(update={"bot_path": path})


async def test_a_failing_step_gives_a_degraded_fallback_and_the_next_turn_works(
    client: Client, broken_bot: Settings
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from worker import build_worker

    conversation_id = new_id()
    with ThreadPoolExecutor(4) as executor:
        async with build_worker(client, broken_bot, executor=executor):
            degraded = await send_turn(
                client, broken_bot, conversation_id, "how long does express shipping take"
            )
            healthy = await send_turn(client, broken_bot, conversation_id, "hello")

    assert degraded.degraded
    assert degraded.degraded_reason == "generate failed"
    assert degraded.reply.text == FALLBACK_TEXT
    assert not healthy.degraded
    assert healthy.turn_index == 1


async def test_history_replays_against_the_current_code(
    client: Client, settings: Settings, worker: Worker
) -> None:
    conversation_id = new_id()
    for text in ["hello", "can I return a gift card?", "order NW-123456 has not arrived"]:
        await send_turn(client, settings, conversation_id, text)
    handle = client.get_workflow_handle_for(ConversationWorkflow.run, workflow_id(conversation_id))
    await handle.signal(ConversationWorkflow.end, EndRequest())
    await handle.result()

    state = await handle.query(ConversationWorkflow.state)
    assert state.slots == {"order_id": "NW-123456"}
    history = await handle.fetch_history()
    result = await Replayer(
        workflows=[ConversationWorkflow], data_converter=pydantic_data_converter
    ).replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None
