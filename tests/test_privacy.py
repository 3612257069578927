"""Privacy end to end: encrypted Temporal payloads (a canary never reaches the server's database in
plaintext), the codec server the Web UI decrypts through, PII redaction of turns (for storage, or for
the LLM only), erasure, the retention schedule, and the lineage and feedback of every answer."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import yaml
from google.protobuf.message import Message
from sqlmodel import Session, select
from temporalio.api.common.v1 import Payload
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment

from api import create_app
from dialogue.platform.codec import EncryptionCodec, encrypted_data_converter
from dialogue.platform.db import AuditEntry, Conversation, get_engine
from dialogue.platform.settings import Settings
from dialogue.platform.temporal import SEARCH_ATTRIBUTES, conversation_key, workflow_id
from tests.conftest import TEST_PAYLOAD_KEYS, api_client, bot_with, served_llm
from tests.fake_llm import FakeLlm, Plan
from worker import build_worker
from workflows.retention import SCHEDULE_ID, RetentionWorkflow, ensure_retention_schedule

CANARY = "zebra-canary-7f3a9c"
TEST_CODEC = EncryptionCodec(TEST_PAYLOAD_KEYS)
EMAIL = "jane.doe@example.com"


def stored_bytes(database: Path) -> bytes:
    """Everything the dev server wrote: its SQLite file and write-ahead log."""
    return b"".join(p.read_bytes() for p in database.parent.glob(database.name + "*"))


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain-control", "encrypted"])
async def test_a_canary_never_reaches_temporals_database_in_plaintext(
    settings: Settings, tmp_path: Path, encrypted: bool
) -> None:
    """Each on a dev server of its own, writing to a SQLite file; without encryption (the control) the
    canary is found there, which shows the search would find it."""
    database = tmp_path / "temporal.db"
    converter = encrypted_data_converter(TEST_PAYLOAD_KEYS if encrypted else None)
    environment = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(settings.temporal_binary),
        dev_server_database_filename=str(database),
        data_converter=converter,
        search_attributes=SEARCH_ATTRIBUTES,
    )
    address = environment.client.service_client.config.target_host
    run_settings = settings.model_copy(update={"payload_encryption": encrypted, "temporal_address": address})
    try:
        with ThreadPoolExecutor(4) as executor:
            async with (
                build_worker(environment.client, run_settings, executor=executor),
                api_client(create_app(run_settings, temporal=environment.client)) as http,
            ):
                reply = await http.post("/v1/conversations/canary/turns", json={"text": f"hello {CANARY}"})
                assert reply.status_code == 200, reply.text
                if encrypted:
                    await decode_through_the_codec_server(http, environment.client, "canary")
    finally:
        await environment.shutdown()
    assert (CANARY.encode() in stored_bytes(database)) is not encrypted


async def decode_through_the_codec_server(
    http: httpx.AsyncClient, temporal: Client, conversation: str
) -> None:
    """What the Web UI does: send the history's payloads to /codec/decode and show the JSON."""
    history = await temporal.get_workflow_handle(
        workflow_id(conversation_key("default", conversation))
    ).fetch_history()
    update = next(
        e for e in history.events if e.HasField("workflow_execution_update_accepted_event_attributes")
    )
    payload = update.workflow_execution_update_accepted_event_attributes.accepted_request.input.args.payloads[
        0
    ]
    assert payload.metadata["encoding"] == b"binary/encrypted" and CANARY.encode() not in payload.data
    body = {
        "payloads": [
            {"metadata": {k: _b64(v) for k, v in payload.metadata.items()}, "data": _b64(payload.data)}
        ]
    }
    origin = {"Origin": "http://127.0.0.1:8233", "X-Namespace": "default"}
    decoded = await http.post("/codec/decode", json=body, headers=origin)
    assert decoded.status_code == 200, decoded.text
    assert decoded.headers["access-control-allow-origin"] == "http://127.0.0.1:8233"
    opened = decoded.json()["payloads"][0]
    assert CANARY in _unb64(opened["data"]) and _unb64(opened["metadata"]["encoding"]) == "json/plain"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> str:
    return base64.b64decode(text).decode()


async def test_personal_data_is_redacted_before_it_is_stored(http: httpx.AsyncClient, client: Client) -> None:
    conversation = f"pii-{uuid.uuid4().hex[:8]}"
    text = f"my email is {EMAIL} and my card 4111 1111 1111 1111, customer NWC-123456"
    reply = (await http.post(f"/v1/conversations/{conversation}/turns", json={"text": text})).json()
    assert reply["user_text"] == "my email is [EMAIL] and my card [CARD], customer [CUSTOMER_ID]"
    transcript = (await http.get(f"/v1/conversations/{conversation}/messages")).json()["items"]
    assert EMAIL not in json.dumps(transcript) and "[EMAIL]" in transcript[0]["text"]
    history = await client.get_workflow_handle(
        workflow_id(conversation_key("default", conversation))
    ).fetch_history()
    decoded = await TEST_CODEC.decode([p for e in history.events for p in payloads_of(e)])
    assert decoded and not any(EMAIL.encode() in p.data or b"4111" in p.data for p in decoded)


def payloads_of(message: Message) -> list[Payload]:
    """Every payload anywhere in a history event (inputs, results, update arguments and replies)."""
    if isinstance(message, Payload):
        return [message]
    found: list[Payload] = []
    for _, value in message.ListFields():
        values = value if isinstance(value, Sequence) else [value]  # repeated fields are sequences
        found += [p for item in values if isinstance(item, Message) for p in payloads_of(item)]
    return found


@pytest.fixture
def llm_only_bot(settings: Settings, tmp_path: Path) -> Path:
    """The demo bot, but redacting only what goes to the LLM."""
    privacy = yaml.safe_load(settings.bot_path.read_text())["privacy"] | {"redact": "llm"}
    return bot_with(settings, tmp_path, privacy=privacy)


@pytest.fixture
async def recording_llm() -> AsyncIterator[tuple[FakeLlm, str]]:
    fake = FakeLlm(plans=[Plan(text="Express shipping costs 12.90 euros [1].")])
    async with served_llm(fake) as url:
        yield fake, url


async def test_redaction_for_the_llm_only(
    settings: Settings, client: Client, llm_only_bot: Path, recording_llm: tuple[FakeLlm, str]
) -> None:
    fake, url = recording_llm
    llm_settings = settings.model_copy(
        update={"bot_path": llm_only_bot, "generator": "openai", "llm_base_url": url, "llm_model": "m"}
    )
    with ThreadPoolExecutor(4) as executor:
        async with (
            build_worker(client, llm_settings, executor=executor),
            api_client(create_app(llm_settings, temporal=client)) as http,
        ):
            text = f"How much does express shipping cost? Reply to {EMAIL}"
            reply = (
                await http.post(f"/v1/conversations/llm-{uuid.uuid4().hex[:6]}/turns", json={"text": text})
            ).json()
    assert "12.90" in reply["reply"]["text"] and EMAIL in reply["user_text"]  # stored as said
    sent = json.dumps(fake.requests)
    assert fake.requests and EMAIL not in sent and "[EMAIL]" in sent  # the model never saw it


async def test_erasure_removes_histories_and_rows_and_keeps_an_audit_entry(
    http: httpx.AsyncClient, client: Client, settings: Settings
) -> None:
    conversation = f"erase-{uuid.uuid4().hex[:8]}"
    key = conversation_key("default", conversation)
    assert (
        await http.post(f"/v1/conversations/{conversation}/turns", json={"text": "hello"})
    ).status_code == 200
    erased = await http.delete(f"/v1/conversations/{conversation}")
    assert erased.status_code == 204, erased.text
    with pytest.raises(RPCError) as gone:
        await client.get_workflow_handle(workflow_id(key)).describe()
    assert gone.value.status == RPCStatusCode.NOT_FOUND
    assert (await http.get(f"/v1/conversations/{conversation}/messages")).json()["total"] == 0
    assert (
        await http.post(f"/v1/conversations/{conversation}/turns", json={"text": "hi"})
    ).status_code == 409
    assert (await http.delete("/v1/conversations/never-was")).status_code == 404
    with Session(get_engine(settings.resolved_database_url)) as session:
        entry = session.exec(select(AuditEntry).where(AuditEntry.target == key)).one()
    assert (entry.action, entry.actor, entry.detail["messages"]) == ("erase", "key:bootstrap", 2)
    assert "hello" not in json.dumps(entry.detail)


async def test_the_retention_schedule_erases_conversations_past_the_bots_retention(
    http: httpx.AsyncClient, client: Client, settings: Settings
) -> None:
    old, recent = f"old-{uuid.uuid4().hex[:8]}", f"new-{uuid.uuid4().hex[:8]}"
    for conversation in (old, recent):
        assert (
            await http.post(f"/v1/conversations/{conversation}/turns", json={"text": "hello"})
        ).status_code == 200
    engine = get_engine(settings.resolved_database_url)
    with Session(engine) as session:  # the demo bot keeps conversations 90 days
        row = session.get(Conversation, conversation_key("default", old))
        assert row is not None
        row.updated_at = datetime.now(UTC) - timedelta(days=91)
        session.add(row)
        session.commit()
    await ensure_retention_schedule(client, settings.task_queue, timedelta(hours=1))
    await ensure_retention_schedule(
        client, settings.task_queue, timedelta(hours=1)
    )  # a second worker: no error
    schedule = await client.get_schedule_handle(SCHEDULE_ID).describe()
    assert schedule.schedule.spec.intervals[0].every == timedelta(hours=1)
    report = await client.execute_workflow(
        RetentionWorkflow.run, id=f"retention-{uuid.uuid4()}", task_queue=settings.task_queue
    )
    assert report.erased == 1
    assert (await http.get(f"/v1/conversations/{old}/messages")).json()["total"] == 0
    assert (await http.get(f"/v1/conversations/{recent}/messages")).json()["total"] == 2
    await client.get_schedule_handle(SCHEDULE_ID).delete()


async def test_lineage_and_feedback_of_an_answer_and_their_export(
    http: httpx.AsyncClient, settings: Settings, tmp_path: Path
) -> None:
    conversation = f"lin-{uuid.uuid4().hex[:8]}"
    turn = (
        await http.post(f"/v1/conversations/{conversation}/turns", json={"text": "how do I return an item?"})
    ).json()
    lineage = (await http.get(f"/v1/conversations/{conversation}/turns/{turn['turn_id']}/lineage")).json()
    assert lineage["reply"] == turn["reply"]["text"]
    recorded = lineage["lineage"]
    assert recorded["nlu_model"].startswith("trained:") and recorded["nlu"]["intent"]["name"] == "returns"
    assert (
        recorded["generator"] == "grounded"
        and {"understand", "retrieve", "generate"} <= recorded["timings_ms"].keys()
    )
    assert recorded["documents"] and all(
        d["version"] and d["chunk_id"] and d["score"] for d in recorded["documents"]
    )

    rated = await http.post(
        f"/v1/conversations/{conversation}/turns/{turn['turn_id']}/feedback",
        json={"rating": "down", "comment": f"wrong, write to {EMAIL}"},
    )
    assert rated.status_code == 201 and rated.json()["comment"] == "wrong, write to [EMAIL]"
    assert (await http.get(f"/v1/conversations/{conversation}/turns/{turn['turn_id']}/lineage")).json()[
        "feedback"
    ]["rating"] == "down"
    # The transcript shows it beside the answer (a reloaded page keeps the thumb pressed).
    messages = (await http.get(f"/v1/conversations/{conversation}/messages")).json()["items"]
    assert [(m["role"], m["rating"]) for m in messages] == [("user", None), ("bot", "down")]
    missing = await http.post(f"/v1/conversations/{conversation}/turns/nope/feedback", json={"rating": "up"})
    assert missing.status_code == 404

    out = tmp_path / "feedback.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIALOGUE_")}
    env["DIALOGUE_DATABASE_URL"] = settings.resolved_database_url
    exported = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "dialogue", "feedback", "export", "--out", str(out), "--tenant", "default"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert exported.returncode == 0, exported.stderr
    (line,) = [json.loads(raw) for raw in out.read_text().splitlines()]
    assert (line["rating"], line["user_text"], line["reply"]) == (
        "down",
        "how do I return an item?",
        turn["reply"]["text"],
    )
    assert line["lineage"]["nlu"]["intent"]["name"] == "returns"
