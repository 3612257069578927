"""Attacks on what a tool's answer carries: the demo's `order_status` answers with the customer's e-mail
address, which must reach no API response, no stored row, no log line, and (under `redact: llm`) not the
model, while the tool goes on working. Against the real stack: Temporal, a worker, the API over HTTP, the
store, and the stand-in model that records what it was sent."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import orjson
import pytest
from sqlalchemy import MetaData, select
from temporalio.client import Client

from dialogue.brain.agent.declarations import CUT, shown
from dialogue.platform.db import get_engine
from dialogue.platform.settings import Settings
from tests.fake_llm import FakeLlm, Plan
from tests.test_agent import agent_stack, turn

ORDER = "NW-105733"
EMAIL = "anna.k@mailbox.org"
"""The demo customer of order NW-105733 (examples/demo/orders.json)."""


def stored_rows(settings: Settings) -> str:
    """Every row of every table of the store, as text: what anyone who reads the database sees."""
    engine = get_engine(settings.resolved_database_url)
    tables = MetaData()
    tables.reflect(engine)
    with engine.connect() as connection:
        return "\n".join(
            repr(row) for table in tables.sorted_tables for row in connection.execute(select(table))
        )


@pytest.mark.parametrize("redact", ["storage", "llm"])
async def test_the_customers_email_in_a_tool_result_leaves_the_worker_nowhere(
    client: Client,
    settings: Settings,
    tmp_path: Path,
    model: tuple[FakeLlm, str],
    caplog: pytest.LogCaptureFixture,
    redact: str,
) -> None:
    """The issue's reproduction: "order NW-105733: where is it?" in agent mode. Under `storage` the address
    is in no response, stored row, log line or model request; under `llm` it is in no model request and no
    log line (the store and lineage keep what the policy lets them)."""
    caplog.set_level(logging.INFO)
    fake, url = model
    fake.plans = [
        Plan(tool_calls=[("order_status", {"order_id": ORDER})]),
        Plan(text=f"Your order {ORDER} is being prepared."),
    ]
    conversation_id = f"pii-{uuid.uuid4().hex[:6]}"
    privacy = {"redact": redact, "patterns": {"CUSTOMER_ID": "\\bNWC-\\d{6}\\b"}}
    async with agent_stack(client, settings, tmp_path, url, privacy=privacy) as chat:
        reply = await turn(chat.user, conversation_id, f"order {ORDER}: where is it?")
        responses = [
            orjson.dumps(reply).decode(),
            (
                await chat.user.get(f"/v1/conversations/{conversation_id}/turns/{reply['turn_id']}/lineage")
            ).text,
            (await chat.user.get(f"/v1/conversations/{conversation_id}/turns/{reply['turn_id']}")).text,
            (await chat.user.get(f"/v1/conversations/{conversation_id}")).text,
            (await chat.user.get(f"/v1/conversations/{conversation_id}/messages")).text,
        ]
        stored = stored_rows(chat.settings)
    [outcome] = reply["lineage"]["agent"][0]["outcomes"]
    assert outcome["ok"] and ORDER in outcome["content"] and "processing" in outcome["content"]  # it works
    told = next(m["content"] for m in fake.requests[-1]["messages"] if m["role"] == "tool")
    assert "[EMAIL]" in told and EMAIL not in told
    assert all(EMAIL not in record.getMessage() for record in caplog.records)
    assert all(EMAIL not in (record.exc_text or "") for record in caplog.records)
    if redact == "storage":
        assert "[EMAIL]" in outcome["content"]
        assert all(EMAIL not in response for response in responses)
        assert ORDER in stored and EMAIL not in stored


def test_a_cut_never_leaves_half_an_address() -> None:
    """Under `redact: llm` lineage keeps results whole and the model's copy is redacted at each step: a cut
    in the middle of an address would leave a half the redaction does not know."""
    result = {"email": EMAIL, "note": "the customer of the order"}
    whole = shown(result, 10_000).whole
    seen = shown(result, whole.index(EMAIL) + len("anna.k@mail") + len(CUT))
    assert seen.cut and "anna.k" not in seen.content and seen.content.endswith(CUT)
