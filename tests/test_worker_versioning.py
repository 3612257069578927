"""Worker Versioning on the real dev server: two builds of the workflow code side by side on one task
queue, conversations pinned to the build they started on (across continue-as-new), a ramp, a new build
made current, and rollbacks; the `dialogue build` commands; the build id of the workflow code."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from typing import Any

import httpx
from temporalio.api.enums.v1 import EventType, PendingWorkflowTaskState, VersioningBehavior
from temporalio.client import Client, WorkflowHandle

from api import create_app
from dialogue.platform import worker_builds
from dialogue.platform.settings import PROJECT_ROOT, Settings
from dialogue.platform.temporal import conversation_key, workflow_id
from dialogue.platform.worker_builds import Routing, UnknownBuild
from tests.conftest import api_client, worker_for
from tests.processes import process_env
from tests.turns import Turn, send_turn
from tests.waiting import eventually


def build_settings(settings: Settings, deployment: str, build: str) -> Settings:
    return settings.model_copy(update={"worker_deployment": deployment, "worker_build_id": build})


def handle(client: Client, conversation: str) -> WorkflowHandle[Any, Any]:
    return client.get_workflow_handle(workflow_id(conversation_key("default", conversation)))


async def pinned_build(client: Client, conversation: str) -> str:
    """The build the conversation's latest run is pinned to ('' while it is not pinned yet)."""
    info = (await handle(client, conversation).describe()).raw_description.workflow_execution_info
    versioning = info.versioning_info
    if versioning.behavior != VersioningBehavior.VERSIONING_BEHAVIOR_PINNED:
        return ""
    return versioning.deployment_version.build_id


async def builds_that_ran(client: Client, conversation: str) -> set[str]:
    """The builds whose workers completed a workflow task of the conversation's latest run."""
    history = await handle(client, conversation).fetch_history()
    return {
        event.workflow_task_completed_event_attributes.deployment_version.build_id
        for event in history.events
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
    }


async def talk(http: httpx.AsyncClient, conversation: str, text: str = "hello") -> dict[str, Any]:
    response = await http.post(f"/v1/conversations/{conversation}/turns", json={"text": text})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def new_conversation_lands_on(client: Client, http: httpx.AsyncClient, build: str) -> str:
    """Start conversations until one starts on `build` (a routing change reaches the task queue a moment
    after the call returns; bench/worker_versioning.py measures how long), and return its id."""

    async def started_on_build() -> str | None:
        conversation = f"v-{uuid.uuid4().hex[:8]}"
        await talk(http, conversation)
        return conversation if await pinned_build(client, conversation) == build else None

    return await eventually(started_on_build, f"a new conversation on build {build}", within=30, interval=0.2)


async def routed(client: Client, deployment: str, build: str) -> Routing:
    """The routing once the build's workers have polled (its version exists only from then on)."""

    async def known() -> Routing | None:
        try:
            routing = await worker_builds.describe(client, deployment)
            routing.build(build)
        except UnknownBuild:
            return None
        return routing

    return await eventually(known, f"build {build} registered", within=30, interval=0.2)


def run_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """`dialogue build …` in its own process, reading the settings from its environment as deployed."""
    return subprocess.run(
        [sys.executable, "-m", "dialogue", "build", *args],
        cwd=PROJECT_ROOT,
        env=process_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_two_builds_side_by_side_pinned_ramped_current_and_rolled_back(
    client: Client, settings: Settings
) -> None:
    deployment = f"dep-{uuid.uuid4().hex[:8]}"
    a, b = build_settings(settings, deployment, "build-a"), build_settings(settings, deployment, "build-b")
    # Every third message the run continues as new: the pin must hold across runs.
    api_settings = settings.model_copy(update={"turns_per_run": 3})
    async with api_client(create_app(api_settings, temporal=client)) as http:
        worker_a: worker_for | None = worker_for(client, a)
        await worker_a.__aenter__()
        try:
            await routed(client, deployment, "build-a")
            assert await worker_builds.make_current(client, deployment, "build-a") is None
            old = await new_conversation_lands_on(client, http, "build-a")

            async with worker_for(client, b):
                await routed(client, deployment, "build-b")
                # A ramp of 100% sends new conversations to B; the rollback of a ramp ends it.
                await worker_builds.ramp(client, deployment, "build-b", 100)
                ramped = await new_conversation_lands_on(client, http, "build-b")
                stopped = await worker_builds.rollback(client, deployment)
                assert (stopped.stopped_ramp, stopped.current) == ("build-b", "build-a")
                await new_conversation_lands_on(client, http, "build-a")

                # B current: new conversations start on B; the old one stays on A, run after run.
                assert await worker_builds.make_current(client, deployment, "build-b") == "build-a"
                newer = await new_conversation_lands_on(client, http, "build-b")
                for text in ["how much does express shipping cost?", "thanks", "hello again"]:
                    await talk(http, old, text)
                state = (await http.get(f"/v1/conversations/{old}")).json()
                assert state["run"] >= 2, state  # it continued as new after B became current
                assert await pinned_build(client, old) == "build-a"
                assert await builds_that_ran(client, old) == {"build-a"}
                assert await builds_that_ran(client, ramped) == {"build-b"}

                # With A's workers gone, B does not take the old conversation's turn, though it answers
                # a conversation started after it: that turn waits for A.
                await worker_a.__aexit__(None, None, None)
                worker_a = None
                waiting = asyncio.create_task(
                    send_turn(
                        http, old, Turn("hello once more", "after-a"), attempt_timeout=40, total_timeout=90
                    )
                )
                await eventually(lambda: task_scheduled(client, old), "the old conversation's turn scheduled")
                await talk(http, newer, "thanks")
                assert await builds_that_ran(client, newer) == {"build-b"}
                assert await task_scheduled(client, old), "build B started the old conversation's task"
                assert not waiting.done()
                worker_a = worker_for(client, a)
                await worker_a.__aenter__()
                turn = await waiting
                assert turn.reply["user_text"] == "hello once more"
                assert await builds_that_ran(client, old) == {"build-a"}

                # Rollback: A is current again; B's conversations stay on B.
                listed = await asyncio.to_thread(run_cli, b, "rollback")
                assert listed.returncode == 0, listed.stderr
                assert "current build: build-a (was build-b)" in listed.stdout
                await new_conversation_lands_on(client, http, "build-a")
                await talk(http, newer, "bye")
                assert await builds_that_ran(client, newer) == {"build-b"}
        finally:
            if worker_a is not None:
                await worker_a.__aexit__(None, None, None)


async def task_scheduled(client: Client, conversation: str) -> bool:
    """The conversation has a workflow task waiting that no worker has started."""
    described = (await handle(client, conversation).describe()).raw_description
    return (
        described.HasField("pending_workflow_task")
        and described.pending_workflow_task.state
        == PendingWorkflowTaskState.PENDING_WORKFLOW_TASK_STATE_SCHEDULED
    )
