"""Outages longer than every step's budget, and what no conversation may then do: fail.

A worker SIGKILLed and kept down, the store unreachable (PostgreSQL behind a proxy that is cut)
or unwritable (SQLite), a conversation's workflow terminated by hand: the conversations go on,
every turn is answered once, the transcript catches up, and a broken workflow is told apart
from an ended conversation and brought back with `dialogue recover`. Real processes, a real
Temporal dev server, real HTTP, real databases; timeouts shortened through settings only.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.exc import DataError, DisconnectionError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from temporalio.api.enums.v1 import PendingActivityState
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import ActivityEnvironment

from activities.record import RecordActivities
from api import create_app
from api.errors import translate
from dialogue.apps.supervisor import CRASH_LIMIT, CRASH_WINDOW_SECONDS, RESTART_MAX_DELAY_SECONDS, Child
from dialogue.model.contracts import UNRECORDABLE, RecordMessageRequest
from dialogue.platform.db import get_engine
from dialogue.platform.recovery import broken_conversations
from dialogue.platform.settings import PROJECT_ROOT, Settings
from dialogue.security.identity import create_key
from tests.conftest import api_client, worker_for
from tests.outages import StoreLock, StoreOutage, TcpProxy, UnwritableSqlite, steps_redone_after_a_timeout
from tests.processes import WorkerProcess, process_env
from tests.turns import Turn, assert_transcript_once, send_turn
from workflows.conversation import RECORD_INLINE, RECORD_UNTIL_DONE

DEADLINE = 4.0
OUTAGE_SECONDS = 20.0
"""Longer than every budget a step has: the turn's deadline (its steps), an inline record, an attempt of a
record made later. A record made later has no total budget at all: an outage only delays it."""
TOTAL_TIMEOUT = OUTAGE_SECONDS + 90


def test_the_outages_outlast_every_step_budget() -> None:
    budgets = [
        DEADLINE,
        RECORD_INLINE["schedule_to_close_timeout"].total_seconds(),
        RECORD_UNTIL_DONE["start_to_close_timeout"].total_seconds(),
    ]
    assert max(budgets) < OUTAGE_SECONDS
    assert "schedule_to_close_timeout" not in RECORD_UNTIL_DONE
    assert RECORD_UNTIL_DONE["retry_policy"].maximum_attempts == 0  # unlimited


def outage_settings(settings: Settings, **update: Any) -> Settings:
    return settings.model_copy(
        update={"turn_deadline_seconds": DEADLINE, "turn_timeout_seconds": DEADLINE + 6, **update}
    )


class Conversations:
    """Turns sent by retrying clients (tests/turns.py), each conversation's in order."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self.turns: dict[str, list[Turn]] = defaultdict(list)

    async def send(self, conversation_id: str, text: str, http: httpx.AsyncClient | None = None) -> Turn:
        turn = Turn(text, f"{conversation_id}-{len(self.turns[conversation_id])}")
        self.turns[conversation_id].append(turn)
        return await send_turn(
            http or self.http, conversation_id, turn, attempt_timeout=15, total_timeout=TOTAL_TIMEOUT
        )


async def post_until_done(
    http: httpx.AsyncClient, path: str, body: dict[str, Any], key: str, expected: int = 200
) -> dict[str, Any]:
    """A person's action, retried with the same Idempotency-Key while the API says to retry (503, 504)."""
    deadline = time.monotonic() + TOTAL_TIMEOUT
    while True:
        response = await http.post(path, json=body, headers={"Idempotency-Key": key}, timeout=15)
        if response.status_code == expected:
            result: dict[str, Any] = response.json()
            return result
        assert response.status_code in (503, 504), response.text
        assert time.monotonic() < deadline, response.text
        await asyncio.sleep(0.5)


async def workflows_of(client: Client, task_queue: str) -> dict[str, WorkflowExecutionStatus | None]:
    return {
        execution.id: execution.status
        async for execution in client.list_workflows(f"TaskQueue = '{task_queue}'")
        if execution.workflow_type == "ConversationWorkflow"
    }


async def assert_none_failed(client: Client, task_queue: str, expected: int) -> None:
    statuses = await workflows_of(client, task_queue)
    assert len(statuses) == expected, statuses
    assert set(statuses.values()) <= {WorkflowExecutionStatus.RUNNING, WorkflowExecutionStatus.COMPLETED}, (
        statuses
    )
    assert not [b for b in await broken_conversations(client) if b.workflow_id in statuses]


def handle_of(client: Client, conversation_id: str) -> WorkflowHandle[Any, Any]:
    return client.get_workflow_handle(f"conv-default/{conversation_id}")


async def wait_for_transcript(http: httpx.AsyncClient, conversation_ids: list[str]) -> None:
    """Until the store has every message of these conversations (their workflows owe it nothing)."""

    async def caught_up() -> bool:
        for conversation_id in conversation_ids:
            state = (await http.get(f"/v1/conversations/{conversation_id}")).json()
            if state["unrecorded"]:
                return False
        return True

    # A record made later backs off to one try every 30 s.
    deadline = time.monotonic() + 60
    while not await caught_up():
        assert time.monotonic() < deadline, "the transcript did not catch up"
        await asyncio.sleep(0.5)


# --- The worker killed and kept down ----------------------------------------------------------


async def test_no_conversation_fails_while_the_worker_is_down_longer_than_every_step(
    settings: Settings, client: Client, tmp_path: Path
) -> None:
    """SIGKILL the only worker while conversations start, take turns, hand off and end, keep it down
    for OUTAGE_SECONDS, then start another: no workflow failed, every turn is answered once, and
    every conversation that did not end goes on."""
    down = outage_settings(settings)
    # Conversations through this API end by themselves after 6 idle seconds: inside the outage.
    idle_ending = down.model_copy(update={"idle_timeout_seconds": 6})
    first = WorkerProcess(down, tmp_path / "worker-1.log")
    second = WorkerProcess(down, tmp_path / "worker-2.log")
    run = uuid.uuid4().hex[:6]
    talking = [f"talk-{run}-{n}" for n in range(3)]
    starting = [f"start-{run}-{n}" for n in range(3)]  # their first turn comes as the worker dies
    new = [f"new-{run}-{n}" for n in range(2)]  # their first turn comes while no worker runs
    handed, ending, idle = f"hand-{run}", f"end-{run}", f"idle-{run}"
    try:
        async with (
            api_client(create_app(down, temporal=client)) as http,
            api_client(create_app(idle_ending, temporal=client)) as idle_http,
        ):
            chat = Conversations(http)
            await first.start()
            await asyncio.gather(
                *(chat.send(c, "hello") for c in [*talking, handed, ending]), chat.send(idle, "hi", idle_http)
            )

            # New conversations whose first records the kill catches in the store: its write lock held,
            # their `record_conversation` (and the deferred `record_turn`) wait inside the worker.
            lock = StoreLock(down.resolved_database_url)
            lock.acquire()
            try:
                at_the_kill = [asyncio.create_task(chat.send(c, "hello")) for c in starting]
                # Each waits to write; at least one write is in the worker's hands (the others may wait for
                # a thread: the worker's are blocked on the lock too).
                handles = [handle_of(client, conversation_id) for conversation_id in starting]
                for handle in handles:
                    await wait_for_activity(handle, "record_conversation", started=False)
                await wait_for_activity(handles, "record_conversation", started=True)
                await first.kill()
                killed = time.monotonic()
            finally:
                lock.release()

            during = [
                *(asyncio.create_task(chat.send(c, "What is your returns policy?")) for c in talking),
                *(asyncio.create_task(chat.send(c, "hello")) for c in new),
                asyncio.create_task(
                    post_until_done(http, f"/v1/conversations/{handed}/handoff", {"agent": "ana"}, f"h-{run}")
                ),
            ]
            ended = await http.post(f"/v1/conversations/{ending}/end")
            assert ended.status_code == 200, ended.text  # a signal: the server takes it without a worker
            # The outage itself, a duration: no worker for longer than every step's budget.
            await asyncio.sleep(OUTAGE_SECONDS - (time.monotonic() - killed))
            print(f"\nworker down for {time.monotonic() - killed:.1f} s")
            print(f"second worker up in {await second.start():.1f} s")

            await asyncio.gather(*at_the_kill, *during)
            await post_until_done(
                http,
                f"/v1/conversations/{handed}/agent-messages",
                {"text": "Ana here, how can I help?", "agent": "ana"},
                f"m-{run}",
                expected=201,
            )
            await post_until_done(http, f"/v1/conversations/{handed}/handback", {"agent": "ana"}, f"b-{run}")

            # Every conversation that did not end goes on; the ended ones say so.
            await asyncio.gather(*(chat.send(c, "thanks") for c in [*talking, *starting, *new, handed]))
            for gone in (ending, idle):
                await wait_for_workflow_close(handle_of(client, gone))
                refused = await http.post(f"/v1/conversations/{gone}/turns", json={"text": "hello?"})
                assert (refused.status_code, refused.json()["error"]["code"]) == (409, "conversation_ended")

            for conversation_id in [*talking, *starting, *new, ending, idle]:
                await assert_transcript_once(http, conversation_id, chat.turns[conversation_id])
            roles = [
                (m["role"], m["text"])
                for m in (await http.get(f"/v1/conversations/{handed}/messages")).json()["items"]
            ]
            assert [role for role, _ in roles] == ["user", "bot", "system", "agent", "system", "user", "bot"]
            listed = (await http.get("/v1/conversations", params={"status": "ended", "q": run})).json()
            assert {item["conversation_id"] for item in listed["items"]} == {ending, idle}

            await assert_none_failed(client, down.task_queue, expected=len(chat.turns))
            redone: set[str] = set()
            for conversation_id in chat.turns:
                redone |= await steps_redone_after_a_timeout(handle_of(client, conversation_id))
            print(f"steps the second worker redid after the first one's timed out: {sorted(redone)}")
            assert {"workflow task", "record_conversation"} <= redone  # the kill caught them in hand
    finally:
        await first.kill()
        await second.kill()


async def wait_for_activity(
    handles: WorkflowHandle[Any, Any] | list[WorkflowHandle[Any, Any]], activity: str, *, started: bool
) -> None:
    """Until `activity` is pending for the workflow (for one of `handles`); with `started`, until a worker
    runs it."""
    handles = handles if isinstance(handles, list) else [handles]
    deadline = time.monotonic() + 30
    while True:
        for handle in handles:
            try:
                described = (await handle.describe()).raw_description
            except RPCError as err:  # not started yet
                assert err.status == RPCStatusCode.NOT_FOUND
                continue
            if any(
                pending.activity_type.name == activity
                and (not started or pending.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED)
                for pending in described.pending_activities
            ):
                return
        what = "started" if started else "scheduled"
        assert time.monotonic() < deadline, f"{activity} of {[h.id for h in handles]} never {what}"
        await asyncio.sleep(0.1)


async def wait_for_workflow_close(handle: WorkflowHandle[Any, Any]) -> None:
    deadline = time.monotonic() + 60
    while (await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
        assert time.monotonic() < deadline, f"{handle.id} did not close"
        await asyncio.sleep(0.2)


# --- The store unavailable --------------------------------------------------------------------


@asynccontextmanager
async def store_outage(store_url: str) -> AsyncIterator[StoreOutage]:
    outage: StoreOutage = (
        TcpProxy(store_url) if store_url.startswith("postgresql") else UnwritableSqlite(store_url)
    )
    try:
        yield outage
    finally:
        outage.restore()
        if isinstance(outage, TcpProxy):
            outage.close()


@pytest.mark.parametrize("store_url", ["postgresql", "sqlite"], indirect=True)
async def test_a_store_outage_delays_the_transcript_and_fails_nothing(
    settings: Settings, client: Client, store_url: str
) -> None:
    """The store cut (PostgreSQL: every connection dropped and refused; SQLite: its files unwritable)
    for OUTAGE_SECONDS while conversations take turns, start, hand off and end: every turn is
    answered, nothing fails, and the transcript catches up when the store is back."""
    async with store_outage(store_url) as outage:
        down = outage_settings(settings, database_url=outage.url)
        idle_ending = down.model_copy(update={"idle_timeout_seconds": 5})
        _, client_key = create_key(get_engine(outage.url), tenant="default", scope="client", name="outage")
        unreachable = isinstance(outage, TcpProxy)  # SQLite is still read: only its writes fail
        run = uuid.uuid4().hex[:6]
        talking, keyed, handed, idle = (f"{what}-{run}" for what in ("talk", "keyed", "hand", "idle"))
        new = f"new-{run}"
        async with (
            worker_for(client, down),
            api_client(create_app(down, temporal=client)) as http,
            api_client(create_app(down, temporal=client), api_key=client_key) as keyed_http,
            api_client(create_app(idle_ending, temporal=client)) as idle_http,
        ):
            chat = Conversations(http)
            await asyncio.gather(
                chat.send(talking, "hello"),
                chat.send(keyed, "hello", keyed_http),
                chat.send(handed, "hello"),
                chat.send(idle, "hello", idle_http),
            )
            outage.cut()
            cut = time.monotonic()

            answers = [
                await chat.send(talking, "How much does express shipping cost?"),
                await chat.send(keyed, "hello", keyed_http),  # a key the store confirmed before the outage
                await chat.send(new, "hello"),  # a conversation starts
            ]
            assert all(not turn.failures for turn in answers), [t.failures for t in answers]
            print(f"\nanswered during the outage (degraded: {[t.reply['degraded'] for t in answers]})")
            streamed = await http.post(
                f"/v1/conversations/{talking}/turns",
                json={"text": "thanks"},
                headers={"Accept": "text/event-stream", "Idempotency-Key": f"{talking}-2"},
            )
            assert streamed.status_code == 200 and "event: final" in streamed.text, streamed.text
            chat.turns[talking].append(Turn("thanks", f"{talking}-2", reply=final_event(streamed.text)))
            handoff = await http.post(f"/v1/conversations/{handed}/handoff", json={"agent": "ana"})
            assert handoff.status_code == 200, handoff.text

            state = (await http.get(f"/v1/conversations/{talking}")).json()
            assert state["status"] == "active" and state["unrecorded"] >= 1, state
            transcript = await http.get(f"/v1/conversations/{talking}/messages")
            ready = await http.get("/readyz")
            stranger = await http.post(
                "/v1/conversations/x/turns",
                json={"text": "hi"},
                headers={"Authorization": "Bearer dk_0123456789ab_" + "x" * 40},
            )
            if unreachable:
                assert transcript.status_code == 503 and transcript.headers["retry-after"], transcript.text
                assert transcript.json()["error"]["code"] == "store_unavailable"
                assert ready.status_code == 503 and ready.json()["checks"]["database"].startswith(
                    "unavailable"
                )
                assert stranger.status_code == 503, stranger.text  # unknown: not refused for good
            else:
                assert transcript.status_code == 200  # read, without the outage's turns yet
                assert len(transcript.json()["items"]) < 2 * len(chat.turns[talking])
                assert stranger.status_code == 401

            # The outage itself, a duration: no store for longer than every step's budget.
            await asyncio.sleep(OUTAGE_SECONDS - (time.monotonic() - cut))
            outage.restore()
            back = time.monotonic()
            print(f"store back after {back - cut:.1f} s")

            await wait_for_transcript(http, [talking, keyed, new, handed])
            print(f"transcripts caught up {time.monotonic() - back:.1f} s after the store came back")
            await wait_for_workflow_close(handle_of(client, idle))  # ended during the outage
            for conversation_id in (talking, keyed, new):
                await assert_transcript_once(http, conversation_id, chat.turns[conversation_id])
            roles = [
                m["role"] for m in (await http.get(f"/v1/conversations/{handed}/messages")).json()["items"]
            ]
            assert roles == ["user", "bot", "system"]
            listed = (await http.get("/v1/conversations", params={"status": "ended", "q": run})).json()
            assert [item["conversation_id"] for item in listed["items"]] == [idle]
            await asyncio.gather(*(chat.send(c, "thanks") for c in (talking, new)))
            await assert_none_failed(client, down.task_queue, expected=5)


@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
async def test_a_worker_and_an_api_started_while_the_store_is_down_answer_turns(
    settings: Settings, client: Client, store_url: str
) -> None:
    """Processes (re)started during a store outage start and serve instead of exiting in a loop; the
    transcript is written once the store is back."""
    conversation_id = f"cold-{uuid.uuid4().hex[:6]}"
    async with store_outage(store_url) as outage:
        outage.cut()
        down = outage_settings(settings, database_url=outage.url)
        async with worker_for(client, down), api_client(create_app(down, temporal=client)) as http:
            chat = Conversations(http)
            turn = await chat.send(conversation_id, "hello")
            assert not turn.failures and turn.reply["reply"]["text"], turn
            outage.restore()
            await wait_for_transcript(http, [conversation_id])
            await assert_transcript_once(http, conversation_id, chat.turns[conversation_id])


def final_event(stream: str) -> dict[str, Any]:
    import orjson

    block = stream.split("event: final", 1)[1]
    data = next(line for line in block.splitlines() if line.startswith("data:"))
    reply: dict[str, Any] = orjson.loads(data.removeprefix("data:").strip())
    return reply


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_data_the_store_refuses_for_good_is_not_retried(database_url: str) -> None:
    """A value PostgreSQL will never take (too long for its column): non-retryable, so the workflow stops
    retrying that one write instead of holding the conversation's transcript behind it."""
    from datetime import UTC, datetime

    from dialogue.platform.db import init_db

    engine = get_engine(database_url)
    init_db(engine)
    message = RecordMessageRequest(
        conversation_id="default/too-long",
        turn_id="agent_message-0",
        turn_index=0,
        role="agent",
        text="hi",
        author="a" * 500,
        at=datetime.now(UTC),
        event="agent_message",
    )
    with pytest.raises(ApplicationError) as raised:
        ActivityEnvironment().run(RecordActivities(engine).record_message, message)
    assert raised.value.type == UNRECORDABLE and raised.value.non_retryable


@pytest.mark.parametrize(
    "error",
    [
        OperationalError("SELECT 1", {}, Exception("connection refused")),
        InterfaceError("SELECT 1", {}, Exception("connection closed")),
        DisconnectionError("gone"),
        PoolTimeoutError("no connection in time"),
    ],
)
def test_a_store_that_cannot_answer_is_a_503(error: Exception) -> None:
    mapped = translate(error)
    assert mapped is not None
    assert (mapped.status, mapped.code, mapped.headers["Retry-After"]) == (503, "store_unavailable", "5")


@pytest.mark.parametrize(
    "error",
    [IntegrityError("INSERT", {}, Exception("duplicate")), DataError("INSERT", {}, Exception("long"))],
)
def test_a_store_error_that_is_a_bug_stays_one(error: Exception) -> None:
    assert translate(error) is None


# --- A broken workflow, told apart and recovered ----------------------------------------------


async def broken_count(client: Client, settings: Settings, status: str) -> float:
    """`dialogue_conversation_workflows_broken{status=…}` from a fresh API's /metrics."""
    async with api_client(create_app(settings, temporal=client)) as http:
        text = (await http.get("/metrics")).text
    line = next(
        x
        for x in text.splitlines()
        if x.startswith(f'dialogue_conversation_workflows_broken{{status="{status}"}}')
    )
    return float(line.split()[-1])


async def wait_for_broken_count(client: Client, settings: Settings, expected: float) -> None:
    """Until /metrics counts `expected` terminated conversations (Temporal's visibility may lag a moment)."""
    deadline = time.monotonic() + 15
    while (count := await broken_count(client, settings, "terminated")) != expected:
        assert time.monotonic() < deadline, f"{count} terminated conversations counted, not {expected}"
        await asyncio.sleep(0.5)


async def test_a_terminated_conversation_is_told_from_an_ended_one_and_recovered(
    settings: Settings, client: Client, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    conversation_id = f"broken-{uuid.uuid4().hex[:6]}"
    chat = Conversations(http)
    await chat.send(conversation_id, "hello")
    answered = await chat.send(conversation_id, "How much does express shipping cost?")
    before = await broken_count(client, settings, "terminated")
    await handle_of(client, conversation_id).terminate("a test breaks it")
    await wait_for_broken_count(client, settings, before + 1)

    refused = await http.post(f"/v1/conversations/{conversation_id}/turns", json={"text": "hello?"})
    assert refused.status_code == 503 and refused.headers["retry-after"], refused.text
    error = refused.json()["error"]
    assert error["code"] == "conversation_unavailable"
    assert f"conv-default/{conversation_id} terminated" in error["message"]
    assert f"dialogue recover {conversation_id} --tenant default" in error["message"]
    state = (await http.get(f"/v1/conversations/{conversation_id}")).json()
    assert (state["status"], state["workflow_status"], state["turn_count"]) == ("failed", "terminated", 2)
    for action in ("end", "handoff"):
        response = await http.post(f"/v1/conversations/{conversation_id}/{action}", json={})
        assert (response.status_code, response.json()["error"]["code"]) == (503, "conversation_unavailable")

    code, output = await dialogue_cli(settings, "recover", conversation_id, "--tenant", "default")
    assert code == 0 and "reset to its last completed workflow task" in output, output
    print(f"\n{output.strip()}")

    # The same idempotency key answers as before; the next turn continues the conversation.
    again = await http.post(
        f"/v1/conversations/{conversation_id}/turns",
        json={"text": answered.text},
        headers={"Idempotency-Key": answered.key},
    )
    assert again.status_code == 200, again.text
    assert (again.json()["turn_index"], again.json()["reply"]["text"]) == (1, answered.reply["reply"]["text"])
    await chat.send(conversation_id, "thanks")
    assert chat.turns[conversation_id][-1].reply["turn_index"] == 2
    await assert_transcript_once(http, conversation_id, chat.turns[conversation_id])
    state = (await http.get(f"/v1/conversations/{conversation_id}")).json()
    assert (state["status"], state["workflow_status"], state["turn_count"]) == ("active", None, 3)
    await wait_for_broken_count(client, settings, before)

    code, output = await dialogue_cli(settings, "recover", conversation_id)
    assert code == 0 and "not broken (running); nothing to do" in output, output


async def dialogue_cli(settings: Settings, *args: str) -> tuple[int, str]:
    """`dialogue …` in a process of its own, reading `settings` from its environment: exit code and output."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dialogue",
        *args,
        cwd=PROJECT_ROOT,
        env=process_env(settings),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 60)
    return await process.wait(), output.decode()


# --- `dialogue up` heals itself ---------------------------------------------------------------


def test_a_crashing_child_is_restarted_with_back_off_until_it_crashes_too_often() -> None:
    child = Child("worker", ["true"])
    now = 1000.0
    delays = []
    for crash in range(CRASH_LIMIT - 1):
        delay = child.schedule_restart(now + crash)
        assert delay is not None
        delays.append(delay)
    assert delays == sorted(delays) and delays[0] == 1.0 and max(delays) <= RESTART_MAX_DELAY_SECONDS
    assert child.schedule_restart(now + CRASH_LIMIT) is None  # too often: the stack stops, saying so

    spaced = Child("worker", ["true"])
    for crash in range(CRASH_LIMIT * 2):  # crashes far apart never add up to the limit
        assert spaced.schedule_restart(now + crash * CRASH_WINDOW_SECONDS) == 1.0
