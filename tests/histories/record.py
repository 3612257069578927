"""Record a conversation's history for the replay tests: `python -m tests.histories.record NAME`.

Runs a scripted conversation (greeting, knowledge answer, the order flow with a detour
while the store cannot be written (so its records are made later, and the run waits for
them before it continues as new), a streamed turn, a handoff asked for by the user with a
person's reply and a handback, a goodbye that ends it) on a dev server of its own with a real worker, in runs of six
messages, and writes the history of each run to `tests/histories/NAME-runN.json`. With `--agent`, the agent script (see AGENT_SCRIPT); with `--memory`, MEMORY_SCRIPT; with `--channel`, CHANNEL_SCRIPT; with `--reminders`, REMINDER_SCRIPT; with `--events`, EVENT_SCRIPT. With `--llm` (`python -m tests.histories.record
NAME --llm`) the answers come from a stand-in LLM over HTTP, and the requests it received are kept
beside the history, for the test that rebuilds them from it. Record one whenever the workflow changes
shape, and keep the old ones: CI replays them all against the current code, so a change that would break
running conversations fails CI.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from temporalio.client import WithStartWorkflowOperation
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from dialogue.apps.testing.stack import served
from dialogue.brain.knowledge import documents
from dialogue.brain.knowledge.search import router_search
from dialogue.brain.nlu.model import ensure_bot_model
from dialogue.model.contracts import (
    AgentMessageRequest,
    ApprovalRequest,
    CancelReminderRequest,
    ChannelAddress,
    EventRequest,
    HandbackRequest,
    PendingApproval,
    Reminder,
    ReminderRequest,
    TurnRequest,
)
from dialogue.platform.bot import load_bot
from dialogue.platform.channels.config import TelegramChannel
from dialogue.platform.db import get_engine, init_db
from dialogue.platform.settings import Settings
from dialogue.platform.starting import conversation_input, start_options
from dialogue.platform.temporal import SEARCH_ATTRIBUTES, workflow_id
from tests.conftest import served_llm
from tests.fake_llm import FakeLlm, Plan
from tests.outages import UnwritableSqlite
from tests.platforms import PlatformStandIn, channels
from worker import build_worker
from workflows.conversation import ConversationWorkflow
from workflows.replay import load_runs

SCRIPT: list[tuple[str, str]] = [
    ("turn", "hello"),
    ("turn", "how much does express shipping cost?"),
    ("turn", "and to Austria?"),
    ("store down", ""),
    ("turn", "where is my order?"),
    ("turn", "can I pay with PayPal?"),
    ("turn", "it is NW-000000"),
    ("turn", "sorry, NW-482913"),
    ("store up", ""),
    ("stream", "how do I return an item?"),
    ("turn", "I want to speak to a human agent"),
    ("agent", "Hello, this is Ada. How can I help?"),
    ("turn", "all good now, thanks"),
    ("handback", ""),
    ("turn", "goodbye!"),
]
TURNS_PER_RUN = 6
# `--agent`: the demo in agent mode (the `agent` flag), with a stand-in model that calls its tools: an
# order looked up, an address change the user approves, a return a person must approve that waits
# across continue-as-new (a question to the stores' MCP server meanwhile) and is denied, a goodbye.
AGENT_SCRIPT: list[tuple[str, str]] = [
    ("turn", "hello"),
    ("turn", "where is my order NW-482913?"),
    ("turn", "please send my order NW-105733 to Ringstr. 5, 1010 Wien"),
    ("approve", "user yes"),
    ("turn", "I want to return my speaker, order NW-654321"),
    ("turn", "when is your Hamburg store open?"),
    ("turn", "thanks"),
    ("approve", "agent no"),
    ("turn", "goodbye!"),
]
# `--memory`: a signed-in user the demo asks whether it may remember her (her yes is her consent), then a
# question the stand-in LLM answers, whose turn the model reads for her memory after the reply.
MEMORY_SCRIPT: list[tuple[str, str]] = [
    ("turn", "hello"),
    ("turn", "Hi, my name is Sofia, please deliver to Leeds"),
    ("turn", "yes please"),
    ("turn", "I'm Sofia, from Bristol. How much does express shipping cost?"),
    ("turn", "goodbye!"),
]
MEMORY_USER = "history-user"
# `--channel`: a conversation held on Telegram (a stand-in of its Bot API over HTTP): each reply and the
# person's message is delivered there by the `deliver` activity, in order.
CHANNEL_SCRIPT: list[tuple[str, str]] = [
    ("turn", "hello"),
    ("turn", "how much does express shipping cost?"),
    ("turn", "I want to speak to a human agent"),
    ("agent", "Hello, this is Ada. How can I help?"),
    ("handback", ""),
    ("turn", "goodbye!"),
]
# `--reminders`: a reminder scheduled in the first run, which continues as new before it is due: the next
# run's timer sends it, then a second reminder is scheduled and cancelled, and the user says goodbye.
REMINDER_SCRIPT: list[tuple[str, str]] = [
    ("turn", "hello"),
    ("remind", "8|Your parcel ships today."),
    ("turn", "how much does express shipping cost?"),
    ("turn", "can I pay with PayPal?"),
    ("turn", "how do I return an item?"),
    ("turn", "and to Austria?"),
    ("turn", "thanks"),
    ("wait", "10"),
    ("remind", "600|This one is cancelled."),
    ("cancel", ""),
    ("turn", "goodbye!"),
]

# `--events`: a reminder waiting for an event the integrator reports ("tell me when my order ships"), kept
# across continue-as-new and said when the event comes in the next run; another whose event never comes,
# dropped unsaid when its wait is over.
EVENT_SCRIPT: list[tuple[str, str]] = [
    ("turn", "hello"),
    ("remind", "600|Your order NW-105733 has shipped.|order-shipped:NW-105733"),
    ("remind", "4|Never said.|order-shipped:NW-000000"),
    ("turn", "how much does express shipping cost?"),
    ("turn", "can I pay with PayPal?"),
    ("turn", "how do I return an item?"),
    ("turn", "and to Austria?"),
    ("turn", "thanks"),
    ("wait", "6"),
    ("event", "order-shipped:NW-105733"),
    ("wait", "2"),
    ("turn", "goodbye!"),
]

LLM_MODEL = "gpt-4o-mini"
LLM_ANSWER = "It is in our help articles [1]."
LLM_STANDALONE = "How much does express shipping to Austria cost?"


def llm_settings(settings: Settings, base_url: str) -> Settings:
    """What a history recorded with `--llm` was made with: rebuilding its requests needs the same."""
    return settings.model_copy(
        update={"generator": "openai", "llm_base_url": base_url, "llm_model": LLM_MODEL}
    )


def stand_in_llm() -> FakeLlm:
    """A model that answers every question from the passages, rewrites follow-ups the same way, and notes
    the city a customer says they are from."""

    def plan(body: dict[str, Any]) -> Plan | None:
        instructions = body["messages"][0]["content"]
        if "standalone question" in instructions:
            return Plan(text=LLM_STANDALONE)
        if instructions.startswith("You keep the notes"):
            return Plan(tool_calls=[("remember", {"kind": "city", "value": "Bristol"})])
        return None

    return FakeLlm(plans=[Plan(text=LLM_ANSWER)], route=plan)


def agent_llm() -> FakeLlm:
    """A model that calls the demo's tools for the agent script's messages, and answers once it has results."""

    def plan(body: dict[str, Any]) -> Plan:
        messages = body["messages"]
        if "tools" not in body or messages[-1]["role"] == "tool":
            return Plan(text="Done, as the tool results say.")
        said = next(m["content"] for m in reversed(messages) if m["role"] == "user")
        calls = {
            "NW-482913": ("order_status", {"order_id": "NW-482913"}),
            "Ringstr": ("change_address", {"order_id": "NW-105733", "address": "Ringstr. 5, 1010 Wien"}),
            "return": ("start_return", {"order_id": "NW-654321", "reason": "not loud enough"}),
            "Hamburg": ("opening_hours", {"store": "hamburg"}),
        }
        wanted = [call for word, call in calls.items() if word in said]
        return Plan(tool_calls=wanted[:1]) if wanted else Plan(text="How can I help?")

    return FakeLlm(route=plan)


async def record(
    name: str,
    *,
    llm: bool = False,
    agent: bool = False,
    memory: bool = False,
    channel: bool = False,
    reminders: bool = False,
    events: bool = False,
) -> list[Path]:
    """With `llm`, the bot answers with a stand-in LLM over HTTP, and the requests it got are written
    beside the history (`NAME.requests.jsonl`): a test rebuilds them from the history alone. With
    `agent`, the agent script runs (the model calls tools); with `memory`, the memory script (a
    signed-in user, the stand-in LLM)."""
    fake = agent_llm() if agent else stand_in_llm()
    script = (
        AGENT_SCRIPT
        if agent
        else MEMORY_SCRIPT
        if memory
        else CHANNEL_SCRIPT
        if channel
        else REMINDER_SCRIPT
        if reminders
        else EVENT_SCRIPT
        if events
        else SCRIPT
    )
    platform = PlatformStandIn()
    async with AsyncExitStack() as stack:
        url = await stack.enter_async_context(served_llm(fake)) if llm or agent or memory else None
        platform_url = await stack.enter_async_context(served(platform.app())) if channel else None
        targets = await _record(
            name, url, script, agent, user=MEMORY_USER if memory else None, platform_url=platform_url
        )
    if channel:
        assert len(platform.sent) == 5, platform.sent  # four replies and the person's message
    if llm:
        requests = Path(__file__).parent / f"{name}.requests.jsonl"
        requests.write_bytes(b"".join(orjson.dumps(r["messages"]) + b"\n" for r in fake.requests))
        targets.append(requests)
    return targets


async def _record(
    name: str,
    llm_url: str | None,
    script: list[tuple[str, str]],
    agent: bool,
    *,
    user: str | None = None,
    platform_url: str | None = None,
) -> list[Path]:
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        settings = Settings(
            data_dir=folder,
            database_url=f"sqlite:///{folder / 'store.db'}",
            task_queue=f"record-{uuid.uuid4()}",
            api_key="unused",
            nlu_model_dir=folder / "nlu",
            turns_per_run=TURNS_PER_RUN,
        )
        if llm_url is not None:
            settings = llm_settings(settings, llm_url)
        address = None
        if platform_url is not None:
            configs = channels(platform_url, "https://bot.example.com")
            settings = settings.model_copy(
                update={
                    "channels": {"shop-telegram": TelegramChannel.model_validate(configs["shop-telegram"])}
                }
            )
            address = ChannelAddress(channel="shop-telegram", platform="telegram", to="1111111")
        bot = load_bot(settings.bot_path)
        engine = get_engine(settings.resolved_database_url)
        init_db(engine)
        assert bot.knowledge_dir
        for path in documents.knowledge_files([bot.resolve(bot.knowledge_dir)]):
            documents.ingest_path(engine, path)
        ensure_bot_model(bot, folder / "nlu", search=router_search(engine, settings))
        env = await WorkflowEnvironment.start_local(
            dev_server_existing_path=str(settings.temporal_binary),
            data_converter=pydantic_data_converter,
            search_attributes=SEARCH_ATTRIBUTES,
        )
        try:
            conversation_id = f"history-{name}"
            with ThreadPoolExecutor(4) as executor:
                async with build_worker(env.client, settings, executor=executor):
                    handle = env.client.get_workflow_handle(workflow_id(conversation_id))
                    outage = UnwritableSqlite(settings.resolved_database_url)
                    flags = {"agent": True} if agent else {}
                    pending: list[PendingApproval] = []
                    scheduled: Reminder | None = None
                    for step, text in script:
                        if step == "store down":
                            outage.cut()
                        elif step == "store up":
                            outage.restore()
                            for _ in range(300):  # its records retry at most 30 s apart
                                if not (await handle.query(ConversationWorkflow.state)).unrecorded:
                                    break
                                await asyncio.sleep(0.2)
                        elif step == "agent":
                            await handle.execute_update(
                                ConversationWorkflow.agent_message,
                                AgentMessageRequest(text=text, agent="ada"),
                            )
                        elif step == "approve":
                            who, answer = text.split()
                            decided = await handle.execute_update(
                                ConversationWorkflow.approve,
                                ApprovalRequest(
                                    call_id=pending.pop(0).call_id,
                                    approve=answer == "yes",
                                    by=f"{who}-key",
                                    as_agent=who == "agent",
                                ),
                            )
                            assert decided.reply is not None, decided
                        elif step == "remind":
                            seconds, said, *event = text.split("|")
                            scheduled = await handle.execute_update(
                                ConversationWorkflow.remind,
                                ReminderRequest(
                                    text=said,
                                    due_at=datetime.now(UTC) + timedelta(seconds=float(seconds)),
                                    by="history",
                                    on_event=event[0] if event else None,
                                ),
                            )
                        elif step == "event":
                            told = await handle.execute_update(
                                ConversationWorkflow.event, EventRequest(name=text)
                            )
                            assert len(told.reminders) == 1, told
                        elif step == "cancel":
                            assert scheduled is not None
                            await handle.execute_update(
                                ConversationWorkflow.cancel_reminder, CancelReminderRequest(id=scheduled.id)
                            )
                        elif step == "wait":
                            await asyncio.sleep(float(text))
                        elif step == "handback":
                            await handle.execute_update(
                                ConversationWorkflow.handback, HandbackRequest(agent="ada")
                            )
                        else:
                            start = WithStartWorkflowOperation(
                                ConversationWorkflow.run,
                                conversation_input(settings, conversation_id, user=user, channel=address),
                                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                                **start_options(settings, conversation_id, "default"),
                            )
                            reply = await env.client.execute_update_with_start_workflow(
                                ConversationWorkflow.turn,
                                TurnRequest(text=text, stream=step == "stream", flags=flags, user=user),
                                start_workflow_operation=start,
                            )
                            pending.extend(reply.approvals)
                    await handle.result()  # a run ends once its deliveries are made
                    histories = await load_runs(conversation_id, env.client)
        finally:
            await env.shutdown()
    targets = []
    for number, history in enumerate(histories, start=1):
        targets.append(Path(__file__).parent / f"{name}-run{number}.json")
        targets[-1].write_text(history.to_json())
    return targets


if __name__ == "__main__":
    options = sys.argv[2:]
    print(
        asyncio.run(
            record(
                sys.argv[1],
                llm="--llm" in options,
                agent="--agent" in options,
                memory="--memory" in options,
                channel="--channel" in options,
                reminders="--reminders" in options,
                events="--events" in options,
            )
        )
    )
