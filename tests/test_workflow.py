"""ConversationWorkflow against the real dev server and a real worker."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from temporalio.api.enums.v1 import EventType
from temporalio.client import (
    Client,
    WithStartWorkflowOperation,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowHistory,
    WorkflowUpdateFailedError,
)
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.worker import Worker

from dialogue.model.contracts import INVALID_TURN, ConversationState, EndRequest, TurnReply, TurnRequest
from dialogue.platform import store
from dialogue.platform.codec import EncryptionCodec
from dialogue.platform.db import get_engine
from dialogue.platform.settings import Settings
from dialogue.platform.starting import conversation_input, start_options
from dialogue.platform.temporal import LAST_INTENT, STATUS, TENANT, TURN_COUNT, conversation_key, workflow_id
from tests.conftest import TEST_PAYLOAD_KEYS, worker_for
from workflows.conversation import FALLBACK_TEXT, ConversationWorkflow
from workflows.replay import divergence, load_history, replay


async def send_turn(
    client: Client, settings: Settings, conversation_id: str, text: str, **overrides: Any
) -> TurnReply:
    start = WithStartWorkflowOperation(
        ConversationWorkflow.run,
        conversation_input(settings, conversation_id).model_copy(update=overrides),
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        **start_options(settings, key(conversation_id), "default"),
    )
    reply: TurnReply = await client.execute_update_with_start_workflow(
        ConversationWorkflow.turn, TurnRequest(text=text), start_workflow_operation=start
    )
    return reply


async def events(handle: WorkflowHandle[Any, Any]) -> list[Any]:
    return [event async for event in handle.fetch_history_events()]


LOCAL_ACTIVITY_MARKER = "core_local_activity"
"""The marker the SDK records for each local activity's result."""


def activity_types(history: list[Any], kind: str = "any") -> list[str]:
    """The activities in `history` in order: `regular` (scheduled through the task queue), `local` (a
    marker: run inside a workflow task), or `any`."""
    found = []
    for e in history:
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED and kind in ("any", "regular"):
            found.append(e.activity_task_scheduled_event_attributes.activity_type.name)
        elif e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED and kind in ("any", "local"):
            marker = e.marker_recorded_event_attributes
            if marker.marker_name == LOCAL_ACTIVITY_MARKER:
                found.append(json.loads(marker.details["data"].payloads[0].data)["activity_type"])
    return found


def new_id() -> str:
    return f"wf-{uuid.uuid4().hex[:10]}"


def key(conversation_id: str) -> str:
    return conversation_key("default", conversation_id)


async def test_a_turn_runs_every_step_and_is_recorded(
    client: Client, settings: Settings, worker: Worker
) -> None:
    conversation_id = new_id()
    reply = await send_turn(client, settings, conversation_id, "How long does express shipping take?")

    assert reply.turn_index == 0
    assert reply.nlu.intent.name == "shipping_info"
    assert reply.reply.sources and reply.reply.sources[0].document_id == "shipping"
    assert not reply.degraded
    assert {"understand", "retrieve", "generate", "record", "total"} <= reply.timings_ms.keys()

    handle = client.get_workflow_handle(workflow_id(key(conversation_id)), result_type=ConversationState)
    history = await events(handle)
    # The steps that take milliseconds run inside the workflow task; a reply made without an LLM too, and
    # the new conversation's index row (which may be written before or after the turn's first steps).
    # Understanding, retrieval and the reply are one local step (`respond_here`), timed part by part; it
    # writes the turn to the transcript too, so no `record_turn` step follows.
    assert activity_types(history, "regular") == []
    assert sorted(activity_types(history, "local")) == ["record_conversation", "respond_here"]
    # Payloads are encrypted in history; the codec (the Web UI's codec server) opens them into readable JSON.
    accepted = next(
        e for e in history if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED
    )
    payload = (
        accepted.workflow_execution_update_accepted_event_attributes.accepted_request.input.args.payloads[0]
    )
    assert payload.metadata["encoding"] == b"binary/encrypted"
    assert b"express shipping" not in payload.data
    (opened,) = await EncryptionCodec(TEST_PAYLOAD_KEYS).decode([payload])
    assert opened.metadata["encoding"] == b"json/plain" and b"express shipping" in opened.data

    described = await handle.describe()
    assert described.typed_search_attributes.get(LAST_INTENT) == "shipping_info"
    assert "1 turns" in (await handle.query("__temporal_workflow_metadata")).current_details
    assert described.typed_search_attributes.get(TURN_COUNT) == 1

    rows, total = store.read_messages(
        get_engine(settings.resolved_database_url), key(conversation_id), limit=10, offset=0
    )
    assert total == 2
    assert rows[0].turn_id == reply.turn_id
    # The transcript keeps the reply and the lineage the caller got.
    assert rows[1].text == reply.reply.text and reply.lineage is not None
    assert rows[1].lineage == reply.lineage.model_dump(mode="json") | {
        "nlu": reply.nlu.model_dump(mode="json")
    }


def upserts(history: list[Any]) -> list[set[str]]:
    """The search attributes each upsert in `history` wrote, in order."""
    return [
        set(e.upsert_workflow_search_attributes_event_attributes.search_attributes.indexed_fields)
        for e in history
        if e.event_type == EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES
    ]


async def test_search_attributes_are_written_when_what_operators_filter_on_changes(
    client: Client, settings: Settings, worker: Worker
) -> None:
    conversation_id = new_id()
    handle = client.get_workflow_handle(workflow_id(key(conversation_id)), result_type=ConversationState)
    await send_turn(client, settings, conversation_id, "hello")
    # Listed from its start (status, tenant), with its first topic; one patch marker, not one per change.
    described = await handle.describe()
    assert described.typed_search_attributes.get(STATUS) == "active"
    assert described.typed_search_attributes.get(TENANT) == "default"
    assert described.typed_search_attributes.get(TURN_COUNT) == 1
    history = await events(handle)
    assert upserts(history) == [{"TemporalChangeVersion"}, {"DialogueLastIntent", "DialogueTurnCount"}]
    patch_markers = [
        e
        for e in history
        if e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED
        and e.marker_recorded_event_attributes.marker_name == "core_patch"
    ]
    assert len(patch_markers) == 1

    await send_turn(client, settings, conversation_id, "How long does express shipping take?")
    await send_turn(client, settings, conversation_id, "can I pay with PayPal?")
    # Later turns change only the topic and the count, which wait for the next write: no upsert.
    assert len(upserts(await events(handle))) == 2
    assert (await handle.query(ConversationWorkflow.state)).turn_count == 3

    await handle.signal(ConversationWorkflow.end, EndRequest(reason="user_left"))
    await handle.result()
    # The end writes the status with what waited: the listing is exact once the conversation ends.
    described = await handle.describe()
    assert described.typed_search_attributes.get(STATUS) == "ended"
    assert described.typed_search_attributes.get(TURN_COUNT) == 3
    assert upserts(await events(handle))[-1] == {"DialogueStatus", "DialogueTurnCount", "DialogueLastIntent"}


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
        client.get_workflow_handle(workflow_id(key(conversation_id)), result_type=ConversationState)
    )
    accepted = [
        e.workflow_execution_update_accepted_event_attributes.accepted_request.meta.update_id
        for e in history
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED
    ]
    index_of = {r.turn_id: r.turn_index for r in replies}
    assert [index_of[u] for u in accepted[1:]] == [1, 2, 3, 4, 5]  # arrival order is turn order
    # One at a time: every turn's step (`respond_here`, which records it too) is scheduled only after the
    # previous turn's was done, and no turn needed the workflow's own `record_turn`.
    steps = [t for t in activity_types(history) if t in ("respond_here", "record_turn")]
    assert steps == ["respond_here"] * 6


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

    handle = client.get_workflow_handle(workflow_id(key(conversation_id)), result_type=ConversationState)
    history = await events(handle)
    accepted = [e for e in history if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED]
    assert len(accepted) == 1
    assert (await handle.query(ConversationWorkflow.state)).turn_count == 1


async def test_end_closes_the_conversation_and_records_it(
    client: Client, settings: Settings, worker: Worker
) -> None:
    conversation_id = new_id()
    await send_turn(client, settings, conversation_id, "hello")
    handle = client.get_workflow_handle(workflow_id(key(conversation_id)), result_type=ConversationState)
    await handle.signal(ConversationWorkflow.end, EndRequest(reason="user_left"))

    final = await handle.result()
    assert (final.status, final.ended_reason, final.turn_count) == ("ended", "user_left", 1)
    assert (
        await handle.query(ConversationWorkflow.state)
    ).status == "ended"  # a closed workflow still answers
    row = store.get_conversation(get_engine(settings.resolved_database_url), key(conversation_id))
    assert row is not None and (row.status, row.ended_reason) == ("ended", "user_left")


async def test_a_closed_conversation_is_never_started_again(
    client: Client, settings: Settings, worker: Worker
) -> None:
    conversation_id = new_id()
    await send_turn(client, settings, conversation_id, "hello")
    handle = client.get_workflow_handle(workflow_id(key(conversation_id)), result_type=ConversationState)
    await handle.signal(ConversationWorkflow.end, EndRequest())
    await handle.result()

    with pytest.raises(WorkflowAlreadyStartedError):
        await send_turn(client, settings, conversation_id, "hello again")
    assert (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED  # no new run


async def test_an_idle_conversation_ends_itself(client: Client, settings: Settings, worker: Worker) -> None:
    conversation_id = new_id()
    await send_turn(client, settings, conversation_id, "hello", idle_timeout_seconds=1)
    final = await asyncio.wait_for(
        client.get_workflow_handle(workflow_id(key(conversation_id)), result_type=ConversationState).result(),
        30,
    )
    assert (final.status, final.ended_reason) == ("ended", "idle_timeout")


async def test_a_turn_weighs_the_knowledge_base_but_cites_it_only_for_a_reply_made_from_it(
    client: Client, settings: Settings, worker: Worker
) -> None:
    conversation_id = new_id()
    greeted = await send_turn(client, settings, conversation_id, "hello")
    answered = await send_turn(client, settings, conversation_id, "How long does express shipping take?")

    # The router weighs the knowledge base's evidence for every message; a template carries none of it.
    assert greeted.nlu.routing is not None and greeted.nlu.routing.best == "intent"
    assert not greeted.reply.sources and greeted.lineage is not None and not greeted.lineage.documents
    assert not greeted.degraded
    assert answered.nlu.routing is not None and answered.nlu.routing.best == "knowledge"
    assert "retrieve" in answered.timings_ms and answered.reply.sources


async def test_turns_keep_a_conversation_alive_with_one_idle_timer_per_quiet_spell(
    client: Client, settings: Settings, worker: Worker
) -> None:
    conversation_id = new_id()
    handle = client.get_workflow_handle(workflow_id(key(conversation_id)), result_type=ConversationState)
    for _ in range(4):  # 4.5 s of turns 1.5 s apart: each moves the 3-second idle spell on
        await send_turn(client, settings, conversation_id, "hello", idle_timeout_seconds=3)
        await asyncio.sleep(1.5)
    final = await asyncio.wait_for(handle.result(), 30)
    assert (final.status, final.ended_reason, final.turn_count) == ("ended", "idle_timeout", 4)

    history = await events(handle)
    started, fired, cancelled = (
        sum(e.event_type == kind for e in history)
        for kind in (
            EventType.EVENT_TYPE_TIMER_STARTED,
            EventType.EVENT_TYPE_TIMER_FIRED,
            EventType.EVENT_TYPE_TIMER_CANCELED,
        )
    )
    # Every idle timer ran out (none cancelled and started again at a turn); a turn's deadline timer,
    # cancelled in the workflow task that started it, never reaches the server.
    assert started == fired and cancelled == 0


@pytest.fixture
def broken_bot(tmp_path: Path, settings: Settings) -> Settings:
    """The demo bot with an answer template that cannot be rendered: generation fails for real."""
    definition = yaml.safe_load(settings.bot_path.read_text())
    definition["answer_template"] = "Found: {missing_field}"
    definition["knowledge_dir"] = str(settings.bot_path.parent / "knowledge")
    definition["python_tools"] = str(settings.bot_path.parent / definition["python_tools"])
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(definition))
    return settings.model_copy(update={"bot_path": path})


async def test_a_failing_step_gives_a_degraded_fallback_and_the_next_turn_works(
    client: Client, broken_bot: Settings
) -> None:
    conversation_id = new_id()
    async with worker_for(client, broken_bot):
        degraded = await send_turn(client, broken_bot, conversation_id, "how long does express shipping take")
        healthy = await send_turn(client, broken_bot, conversation_id, "hello")

    assert degraded.degraded
    assert degraded.degraded_reason == "generate failed"
    assert degraded.reply.text == FALLBACK_TEXT
    assert not healthy.degraded
    assert healthy.turn_index == 1


async def test_history_replays_against_the_current_code(
    client: Client, settings: Settings, worker: Worker, tmp_path: Path
) -> None:
    conversation_id = new_id()
    for text in ["hello", "can I return a gift card?", "order NW-482913 has not arrived"]:
        await send_turn(client, settings, conversation_id, text)
    handle = client.get_workflow_handle(workflow_id(key(conversation_id)), result_type=ConversationState)
    await handle.signal(ConversationWorkflow.end, EndRequest())
    await handle.result()

    state = await handle.query(ConversationWorkflow.state)
    assert state.slots == {"order_id": "NW-482913"}
    from_server = await load_history(key(conversation_id), client=client)
    exported = tmp_path / "history.json"
    exported.write_text(from_server.to_json())
    from_file = await load_history(key(conversation_id), history_file=exported)
    assert len(from_file.events) == len(from_server.events) > 20
    assert (await replay(from_file, client.data_converter)).replay_failure is None


async def test_replay_catches_code_that_would_decide_differently(
    client: Client, settings: Settings, worker: Worker
) -> None:
    conversation_id = new_id()
    await send_turn(client, settings, conversation_id, "hello")
    handle = client.get_workflow_handle(workflow_id(key(conversation_id)), result_type=ConversationState)
    await handle.signal(ConversationWorkflow.end, EndRequest())
    await handle.result()  # its closing record is a regular activity
    history = await load_history(key(conversation_id), client=client)
    # As if the code used to call another activity first: history and code disagree at that event.
    scheduled = next(
        e for e in history.events if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    )
    scheduled.activity_task_scheduled_event_attributes.activity_type.name = "an_older_step"
    result = await replay(history, client.data_converter)
    assert result.replay_failure is not None
    report = await divergence(history, result.replay_failure, client.data_converter)
    assert report.startswith(f"at event {scheduled.event_id} (ACTIVITY_TASK_SCHEDULED)"), report

    # Dropping events instead makes the history inconsistent: still reported with where it broke.
    dropped = [e for e in history.events if e.event_type != EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED]
    broken = await replay(WorkflowHistory(history.workflow_id, dropped), client.data_converter)
    assert broken.replay_failure is not None
    assert (await divergence(history, broken.replay_failure, client.data_converter)).startswith("at event ")


async def test_an_llm_reply_is_its_own_regular_activity_and_a_template_reply_stays_local(
    client: Client, settings: Settings
) -> None:
    from tests.conftest import served_llm
    from tests.fake_llm import FakeLlm, Plan

    fake = FakeLlm(plans=[Plan(text="Express shipping costs 12.90 euros [1].")])
    async with served_llm(fake) as llm_url:
        with_llm = settings.model_copy(
            update={"generator": "openai", "llm_base_url": llm_url, "llm_model": "stand-in"}
        )
        conversation_id = new_id()
        async with worker_for(client, with_llm):
            answered = await send_turn(
                client, with_llm, conversation_id, "How much does express shipping cost?"
            )
            greeted = await send_turn(client, with_llm, conversation_id, "hello")

    assert answered.reply.generator == "openai:stand-in" and "12.90" in answered.reply.text
    assert greeted.reply.generator == "template"
    assert len(fake.requests) == 1  # the greeting never reached the model
    history = await events(client.get_workflow_handle(workflow_id(key(conversation_id))))
    # The model's answer went through the task queue: retried on any worker, heartbeating. The local
    # `respond_here` ran first and handed it over without a reply; it made the greeting's reply itself.
    assert activity_types(history, "regular") == ["generate"]
    local_steps = activity_types(history, "local")
    assert local_steps.count("respond_here") == 2 and "compose" not in local_steps
