"""Faults a real deployment meets: the worker killed mid-turn, the Temporal server restarted, a flaky LLM.

Real processes, real Temporal dev servers, real HTTP on loopback, every wait bounded. The
clients here do what the API asks of them (tests/turns.py): a turn whose request failed or
timed out is sent again with the same `Idempotency-Key`.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from temporalio.api.enums.v1 import PendingWorkflowTaskState
from temporalio.client import Client, WorkflowHandle

from api import create_app
from dialogue.platform.settings import Settings
from dialogue.platform.temporal import connect, search_attribute_flags
from tests.conftest import api_client, free_port, served_llm
from tests.fake_llm import FakeLlm, Plan
from tests.outages import StoreLock, steps_redone_after_a_timeout
from tests.processes import WorkerProcess
from tests.turns import Turn, assert_transcript_once, send_turn
from tests.waiting import eventually
from worker import build_worker
from workflows.conversation import FALLBACK_TEXT

SLOW_QUESTION = "How much does express shipping cost?"  # answered by the LLM
OTHER_QUESTION = "What is your returns policy?"  # answered by the LLM too
LLM_ANSWER = "It costs 12.90 euros [1]."
START_TIMEOUT = 60.0
LOCAL_ACTIVITIES_STARTED = "temporal_local_activity_total"
"""The Temporal SDK's count of the local activities a worker started, by `activity_type`."""


# --- The pieces the faults hit ----------------------------------------------------------------


class DevServer:
    """A Temporal dev server of the test's own, on a SQLite file that outlives its process."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.db = folder / "temporal.db"
        self.log = folder / "temporal.log"
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> float:
        """Start it (again) and wait until it accepts connections; returns how long that took."""
        started = time.monotonic()
        with self.log.open("ab") as out:
            # The flags of `dialogue up` (dialogue/apps/supervisor.py), without the Web UI.
            self.process = await asyncio.create_subprocess_exec(
                str(Settings().temporal_binary),
                "server",
                "start-dev",
                "--ip",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--headless",
                "--db-filename",
                str(self.db),
                "--namespace",
                "default",
                "--log-level",
                "warn",
                *search_attribute_flags(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
            )
        while True:
            assert self.process.returncode is None, f"the dev server exited:\n{self.log.read_text()}"
            assert time.monotonic() < started + START_TIMEOUT, f"no dev server:\n{self.log.read_text()}"
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.1)
                continue
            writer.close()
            await writer.wait_closed()
            break
        # The port opens before the frontend serves ("Frontend is not healthy yet"): a client that connects
        # then is refused, so the server is up once one can connect.
        while True:
            assert time.monotonic() < started + START_TIMEOUT, (
                f"no healthy dev server:\n{self.log.read_text()}"
            )
            try:
                await Client.connect(f"127.0.0.1:{self.port}")
            except RuntimeError:
                await asyncio.sleep(0.1)
                continue
            return time.monotonic() - started

    async def stop(self) -> None:
        """SIGTERM, as an orchestrator stops it, and wait until it is gone."""
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 30)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
                raise


@asynccontextmanager
async def worker_and_api(client: Client, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A worker in this process and the API over real HTTP, both on `client`."""
    with ThreadPoolExecutor(max_workers=8) as executor:
        async with (
            build_worker(client, settings, executor=executor),
            api_client(create_app(settings, temporal=client)) as http,
        ):
            yield http


async def conversation_workflow(
    client: Client, task_queue: str, conversation_id: str
) -> WorkflowHandle[Any, Any]:
    """The conversation's workflow, found by its task queue rather than by the id naming scheme."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        async for execution in client.list_workflows(f"TaskQueue = '{task_queue}'"):
            if execution.id.endswith(conversation_id):
                return client.get_workflow_handle(execution.id)
        await asyncio.sleep(0.1)
    raise AssertionError(f"no workflow for {conversation_id} on {task_queue}")


async def wait_for_workflow_task_in_hand(workflow: WorkflowHandle[Any, Any]) -> None:
    """Until a worker holds the workflow's task (its local activities run inside it)."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        task = (await workflow.describe()).raw_description.pending_workflow_task
        if task.state == PendingWorkflowTaskState.PENDING_WORKFLOW_TASK_STATE_STARTED:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"no worker took the workflow task of {workflow.id}")


# --- 1. The worker killed mid-turn ------------------------------------------------------------


async def test_a_worker_killed_mid_turn_loses_no_turn_and_doubles_none(
    settings: Settings, client: Client, tmp_path: Path
) -> None:
    """SIGKILL the worker while one conversation's turn waits for the LLM, another's is being
    recorded, and a third's has just been handed to the worker; a new worker finishes all
    three, each exactly once, and the clients' retries get the same turns' replies."""
    fake = FakeLlm(plans=[Plan(text=LLM_ANSWER, delay=2)])
    async with served_llm(fake) as llm_url:
        # A deadline above the recovery time: this is about the real reply, not the fallback.
        crash_settings = settings.model_copy(
            update={
                "generator": "openai",
                "llm_base_url": llm_url,
                "llm_model": "crash",
                "turn_deadline_seconds": 45,
                "turn_timeout_seconds": 50,
            }
        )
        # Its metrics on a port of its own: they show when its `record_turn` has started.
        first = WorkerProcess(
            crash_settings.model_copy(update={"worker_metrics_port": free_port()}), tmp_path / "worker-1.log"
        )
        second = WorkerProcess(crash_settings, tmp_path / "worker-2.log")
        lock = StoreLock(crash_settings.resolved_database_url)
        try:
            async with api_client(create_app(crash_settings, temporal=client)) as http:
                print(f"\nfirst worker up in {await first.start():.1f} s")
                run = uuid.uuid4().hex[:6]
                generating, recording, handed = (f"kill-{run}-{step}" for step in ("gen", "rec", "wt"))
                turns: dict[str, list[Turn]] = {generating: [], recording: [], handed: []}

                async def send(conversation_id: str, text: str, attempt_timeout: float = 15) -> Turn:
                    turn = Turn(text, f"{conversation_id}-{len(turns[conversation_id])}")
                    turns[conversation_id].append(turn)
                    return await send_turn(
                        http, conversation_id, turn, attempt_timeout=attempt_timeout, total_timeout=60
                    )

                # A first turn each, so that each conversation is cached (sticky) on the first worker.
                await asyncio.gather(*(send(c, "hello") for c in turns))
                workflows = {
                    c: await conversation_workflow(client, crash_settings.task_queue, c) for c in turns
                }

                # The turns the kill catches. Their clients wait 4 s an attempt, less than the recovery
                # takes: they give up and send the turn again, with the same key.
                records_started = await first.metric(LOCAL_ACTIVITIES_STARTED, activity_type="record_turn")
                lock.acquire()
                in_record = asyncio.create_task(send(recording, "thanks", attempt_timeout=4))
                await wait_for_workflow_task_in_hand(workflows[recording])

                # `record_turn` is a local activity, inside the workflow task: once started, it is blocked
                # on the store's lock.
                async def record_turn_started() -> bool:
                    started = await first.metric(LOCAL_ACTIVITIES_STARTED, activity_type="record_turn")
                    return started == records_started + 1

                await eventually(record_turn_started, "the worker to start the turn's record_turn")
                in_generate = asyncio.create_task(send(generating, SLOW_QUESTION, attempt_timeout=4))
                await eventually(lambda: len(fake.requests) == 1, "the LLM request")
                first.freeze()  # from here on it finishes nothing: each turn stays where it is
                in_workflow_task = asyncio.create_task(send(handed, OTHER_QUESTION, attempt_timeout=4))
                # The server hands the new turn's workflow task to the frozen worker, whose poll is open.
                await wait_for_workflow_task_in_hand(workflows[handed])
                await first.kill()
                killed = time.monotonic()
                lock.release()

                print(f"second worker up in {await second.start():.1f} s after the kill")
                done = await asyncio.gather(in_generate, in_record, in_workflow_task)
                for step, turn in zip(("generate", "record_turn", "workflow task"), done, strict=True):
                    print(
                        f"killed in {step}: answered {turn.answered_at - killed:.1f} s after the kill, "
                        f"{turn.seconds:.1f} s after it was sent; the client's failed attempts: {turn.failures}"
                    )
                    assert not turn.reply["degraded"], turn.reply
                assert LLM_ANSWER.split(" [")[0] in done[0].reply["reply"]["text"]
                # Each kill landed where it was meant to: the server gave that step to the new worker.
                for conversation_id, step in (
                    (generating, "generate"),
                    (
                        recording,
                        "workflow task",
                    ),  # record_turn is a local activity: its workflow task is redone
                    (handed, "workflow task"),
                ):
                    assert step in await steps_redone_after_a_timeout(workflows[conversation_id])
                # Generation ran twice (at least once is all an activity promises); the reply exists once.
                assert [r["messages"][-1]["content"] for r in fake.requests].count(SLOW_QUESTION) == 2

                # The new worker carries on with every conversation.
                await asyncio.gather(*(send(c, "thanks") for c in turns))
                for conversation_id, sent in turns.items():
                    await assert_transcript_once(http, conversation_id, sent)
        finally:
            lock.release()
            await first.kill()
            await second.kill()


# --- 2. The Temporal server restarted ---------------------------------------------------------

RESTART_TEXTS = ["hello", OTHER_QUESTION, SLOW_QUESTION, "thanks", "are you a bot?", "hi"]


async def test_conversations_survive_a_temporal_restart(settings: Settings, tmp_path: Path) -> None:
    """Stop the dev server (SIGTERM) in the middle of five conversations, keep it down until the API
    answers 503, and start it again on the same SQLite file: the worker and the API's client
    reconnect by themselves, and every turn is answered, and recorded, exactly once."""
    server = DevServer(tmp_path)
    print(f"\ndev server up in {await server.start():.1f} s")
    try:
        restart_settings = settings.model_copy(update={"temporal_address": server.address})
        temporal = await asyncio.wait_for(connect(restart_settings), 30)  # as the API and worker connect
        async with worker_and_api(temporal, restart_settings) as http:
            run = uuid.uuid4().hex[:6]
            conversations = [f"restart-{run}-{n}" for n in range(5)]
            every_turn: list[Turn] = []
            halfway = asyncio.Event()
            total = len(conversations) * len(RESTART_TEXTS)

            async def talk(conversation_id: str) -> list[Turn]:
                sent = []
                for index, text in enumerate(RESTART_TEXTS):
                    turn = Turn(text, f"{conversation_id}-{index}")
                    every_turn.append(turn)
                    sent.append(
                        await send_turn(http, conversation_id, turn, attempt_timeout=20, total_timeout=60)
                    )
                    if sum(bool(t.reply) for t in every_turn) >= total // 3:
                        halfway.set()
                    # A person reads the reply before answering: the pace of the traffic, which keeps every
                    # conversation talking through the restart. A duration, not an ordering: nothing waits
                    # on it, and the restart waits on its own conditions (a third answered, a 503).
                    await asyncio.sleep(0.3)
                return sent

            def unavailable() -> bool:
                return any("503" in turn.failures for turn in every_turn)

            async def restart() -> tuple[float, float, float]:
                await halfway.wait()
                stopping = time.monotonic()
                await server.stop()
                stopped = time.monotonic()
                # The Temporal client retries on its own for a while; down longer, the API says 503.
                await eventually(unavailable, "a 503 from the API", within=30)
                down = time.monotonic() - stopped
                return stopped - stopping, down, await server.start()

            talks = asyncio.gather(*(talk(c) for c in conversations))
            stopping, down, starting = await asyncio.wait_for(restart(), 60)
            restarted = time.monotonic()
            print(f"dev server stopped in {stopping:.1f} s, down {down:.1f} s, up again in {starting:.1f} s")
            transcripts = await asyncio.wait_for(talks, 60)

            print(f"turns' failed attempts, retried: {[t.failures for t in every_turn if t.failures]}")
            print(f"last reply {max(t.answered_at for t in every_turn) - restarted:.1f} s after the restart")
            for conversation_id, sent in zip(conversations, transcripts, strict=True):
                assert [turn.reply["turn_index"] for turn in sent] == list(range(len(RESTART_TEXTS)))
                await assert_transcript_once(http, conversation_id, sent)
                state = (await http.get(f"/v1/conversations/{conversation_id}")).json()
                assert state["turn_count"] == len(RESTART_TEXTS)
    finally:
        await server.stop()


# --- 3. A flaky LLM ---------------------------------------------------------------------------

FLAKY_DEADLINE = 4.0
STALL_SECONDS = 7.0  # past the deadline
MARGIN = 5.0  # a hang check on a shared, noisy machine, not a benchmark
FLAKY_QUESTIONS = [SLOW_QUESTION, OTHER_QUESTION, SLOW_QUESTION, OTHER_QUESTION]


def flaky_plans(seed: int, count: int) -> list[Plan]:
    """A reproducible mix: 30 % errors (500, 429 with Retry-After), 12 % stalls, the rest answers."""
    rng = random.Random(seed)
    plans = []
    for _ in range(count):
        roll = rng.random()
        if roll < 0.15:
            plans.append(Plan(status=500))
        elif roll < 0.30:
            plans.append(Plan(status=429, headers={"Retry-After": "1"}))
        elif roll < 0.42:
            plans.append(Plan(text=LLM_ANSWER, delay=STALL_SECONDS))
        else:
            plans.append(Plan(text=LLM_ANSWER, delay=rng.uniform(0.05, 0.5)))
    return [*plans, Plan(text=LLM_ANSWER)]  # the last one repeats


async def test_a_flaky_llm_gets_each_turn_a_reply_or_a_fallback_within_the_deadline(
    settings: Settings, client: Client
) -> None:
    """An LLM endpoint that fails 30 % of its calls and sometimes stalls past the turn's deadline:
    every turn is answered, really or with the fallback marked degraded, within the deadline,
    and the conversation goes on."""
    fake = FakeLlm(plans=flaky_plans(seed=7, count=40))
    async with served_llm(fake) as llm_url:
        flaky_settings = settings.model_copy(
            update={
                "generator": "openai",
                "llm_base_url": llm_url,
                "llm_model": "flaky",
                "turn_deadline_seconds": FLAKY_DEADLINE,
            }
        )
        async with worker_and_api(client, flaky_settings) as http:
            run = uuid.uuid4().hex[:6]

            async def talk(conversation_id: str) -> list[Turn]:
                sent = []
                # The questions go to the LLM; the greeting after them shows the conversation is fine.
                for index, text in enumerate([*FLAKY_QUESTIONS, "hello"]):
                    turn = Turn(text, f"{conversation_id}-{index}")
                    sent.append(
                        await send_turn(
                            http,
                            conversation_id,
                            turn,
                            attempt_timeout=FLAKY_DEADLINE + MARGIN,
                            total_timeout=FLAKY_DEADLINE + MARGIN,
                        )
                    )
                return sent

            conversations = [f"flaky-{run}-{n}" for n in range(3)]
            transcripts = await asyncio.gather(*(talk(c) for c in conversations))

            outcomes = []
            for conversation_id, sent in zip(conversations, transcripts, strict=True):
                for turn in sent:
                    assert not turn.failures and turn.seconds < FLAKY_DEADLINE + MARGIN, turn
                    reply = turn.reply
                    if reply["degraded"]:
                        assert reply["degraded_reason"] and reply["reply"]["text"] == FALLBACK_TEXT, reply
                        outcomes.append(f"degraded ({reply['degraded_reason']})")
                    elif turn.text in FLAKY_QUESTIONS:
                        assert "12.90" in reply["reply"]["text"], reply  # the LLM's own answer
                        outcomes.append("real")
                assert not sent[-1].reply["degraded"]  # the turn after the LLM's troubles works
                await assert_transcript_once(http, conversation_id, sent)
        print(f"\n{len(fake.requests)} LLM calls; turns: {sorted(outcomes)}")
        print(f"slowest turn: {max(turn.seconds for sent in transcripts for turn in sent):.1f} s")
        assert "real" in outcomes and any(o.startswith("degraded") for o in outcomes)
