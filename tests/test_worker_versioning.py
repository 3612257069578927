"""Worker Versioning on the real dev server: two builds of the workflow code side by side on one task
queue, conversations pinned to the build they started on (across continue-as-new), a ramp, a new build
made current, and rollbacks; the `dialogue build` commands; the build id of the workflow code."""

from __future__ import annotations

import ast
import asyncio
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx
from temporalio.api.enums.v1 import EventType, PendingWorkflowTaskState, VersioningBehavior
from temporalio.client import Client, WorkflowHandle

from api import create_app
from dialogue.platform import worker_builds
from dialogue.platform.settings import PROJECT_ROOT, Settings
from dialogue.platform.temporal import conversation_key, workflow_id
from dialogue.platform.worker_builds import BuildError, Routing, UnknownBuild
from tests.conftest import api_client, worker_for
from tests.processes import process_env
from tests.turns import Turn, send_turn
from tests.waiting import eventually

T = TypeVar("T")


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
    """The builds whose workers completed a workflow task of the conversation, in any of its runs."""
    builds = set()
    key = workflow_id(conversation_key("default", conversation))
    async for run in client.list_workflows(f"WorkflowId = '{key}'"):
        history = await client.get_workflow_handle(key, run_id=run.run_id).fetch_history()
        builds |= {
            event.workflow_task_completed_event_attributes.deployment_version.build_id
            for event in history.events
            if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
        }
    return builds


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

    found = await eventually(
        started_on_build, f"a new conversation on build {build}", within=30, interval=0.2
    )
    assert found is not None
    return found


async def routed(client: Client, deployment: str, build: str) -> Routing:
    """The routing once the build's workers have polled (its version exists only from then on)."""

    async def known() -> Routing | None:
        try:
            routing = await worker_builds.describe(client, deployment)
            routing.build(build)
        except UnknownBuild:
            return None
        return routing

    found = await eventually(known, f"build {build} registered", within=30, interval=0.2)
    assert found is not None
    return found


async def accepted(change: Callable[[], Awaitable[T]]) -> T:
    """The routing change once Temporal accepts it: a new build's workers register its workflow and its
    activity task queues one after the other, and until both are in, Temporal refuses to route to it."""

    async def attempt() -> tuple[T] | None:
        try:
            return (await change(),)
        except BuildError as err:
            # Not yet routable, or the dev server gave the change up while busy (seen once in CI): again.
            assert "missing active task queues" in str(err) or worker_builds.UNFINISHED in str(err), err
            return None

    done = await eventually(attempt, "the routing change accepted", within=30, interval=0.2)
    assert done is not None
    return done[0]


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
        worker_a = worker_for(client, a)
        await worker_a.__aenter__()
        a_running = True
        try:
            await routed(client, deployment, "build-a")
            assert await accepted(lambda: worker_builds.make_current(client, deployment, "build-a")) is None
            old = await new_conversation_lands_on(client, http, "build-a")

            async with worker_for(client, b):
                await routed(client, deployment, "build-b")
                # A ramp of 100% sends new conversations to B; the rollback of a ramp ends it.
                await accepted(lambda: worker_builds.ramp(client, deployment, "build-b", 100))
                ramped = await new_conversation_lands_on(client, http, "build-b")
                stopped = await worker_builds.rollback(client, deployment)
                assert (stopped.stopped_ramp, stopped.current) == ("build-b", "build-a")
                await new_conversation_lands_on(client, http, "build-a")

                # B current: new conversations start on B; the old one stays on A, run after run.
                assert (
                    await accepted(lambda: worker_builds.make_current(client, deployment, "build-b"))
                    == "build-a"
                )
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
                a_running = False
                await worker_a.__aexit__(None, None, None)
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
                a_running = True
                turn = await waiting
                assert turn.reply["user_text"] == "hello once more"
                assert await builds_that_ran(client, old) == {"build-a"}

                # Rollback: A is current again; B's conversations stay on B.
                listed = await asyncio.to_thread(run_cli, b, "rollback")
                assert listed.returncode == 0, listed.stderr
                assert "current build: build-a (was build-b)" in listed.stdout
                await new_conversation_lands_on(client, http, "build-a")
                await talk(http, newer, "how much does express shipping cost?")
                assert await builds_that_ran(client, newer) == {"build-b"}

                # `list` counts what is open on each build; `move` retires B early: its conversations
                # go on on A (the escape hatch, as safe as the patches).
                listed = await asyncio.to_thread(run_cli, b, "list")
                assert listed.returncode == 0, listed.stderr
                assert f"deployment {deployment}: current build-a" in listed.stdout
                # `ramped` and `newer`, and any tried while routing changed (visibility is a moment behind)
                await eventually(
                    lambda: open_on(client, deployment, "build-b", at_least=2), "two open on B", within=30
                )
                moved = await asyncio.to_thread(run_cli, b, "move", "build-b", "--to", "build-a")
                assert moved.returncode == 0, moved.stderr
                assert "open workflows moved from build build-b to build-a" in moved.stdout
                assert int(moved.stdout.split()[0]) >= 2, moved.stdout
                await talk(http, newer, "one more thing")
                assert "build-a" in await builds_that_ran(client, newer)
                assert await pinned_build(client, newer) == "build-a"
        finally:
            if a_running:
                await worker_a.__aexit__(None, None, None)


async def open_on(client: Client, deployment: str, build: str, *, at_least: int) -> bool:
    return await worker_builds.count_open_workflows(client, deployment, build) >= at_least


async def task_scheduled(client: Client, conversation: str) -> bool:
    """The conversation has a workflow task waiting that no worker has started."""
    described = (await handle(client, conversation).describe()).raw_description
    return (
        described.HasField("pending_workflow_task")
        and described.pending_workflow_task.state
        == PendingWorkflowTaskState.PENDING_WORKFLOW_TASK_STATE_SCHEDULED
    )


async def test_unknown_build_is_refused_with_exit_2(client: Client, settings: Settings) -> None:
    deployment = f"dep-{uuid.uuid4().hex[:8]}"
    a = build_settings(settings, deployment, "build-a")
    async with worker_for(client, a):
        await routed(client, deployment, "build-a")
        for args in (["current", "no-such-build"], ["ramp", "no-such-build", "--percent", "10"]):
            refused = await asyncio.to_thread(run_cli, a, *args)
            assert refused.returncode == 2, refused.stdout + refused.stderr
            assert "no build 'no-such-build'" in refused.stderr and "build-a" in refused.stderr
        # Nothing was ever current: there is nothing to roll back to.
        nothing = await asyncio.to_thread(run_cli, a, "rollback")
        assert nothing.returncode == 1 and "current before" in nothing.stderr
    gone = await asyncio.to_thread(run_cli, a, "list", "--deployment", "never-polled")
    assert gone.returncode == 2 and "no deployment 'never-polled'" in gone.stderr


def test_unversioned_unless_a_deployment_is_set(settings: Settings) -> None:
    assert worker_builds.deployment_config(settings) is None
    config = worker_builds.deployment_config(settings.model_copy(update={"worker_deployment": "dialogue"}))
    assert config is not None and config.use_worker_versioning
    assert config.version.build_id == worker_builds.code_build_id()


def test_the_build_id_is_the_workflow_code(settings: Settings) -> None:
    """Every process derives the same id from the same code (`dialogue build id` is another process)."""
    printed = run_cli(settings, "id")
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.strip() == worker_builds.code_build_id()
    assert len(worker_builds.code_build_id()) == worker_builds.BUILD_ID_LENGTH
    named = run_cli(settings.model_copy(update={"worker_build_id": "release-7"}), "id")
    assert named.stdout.strip() == "release-7"


def test_the_build_id_covers_every_module_the_workflows_run() -> None:
    """A project module the workflow code imports (activities aside: called by name) is hashed with it,
    or set aside with its reason."""
    hashed = {path.resolve() for path in worker_builds.workflow_code_files()}
    imported = set()
    for path in (PROJECT_ROOT / "workflows").rglob("*.py"):
        assert path.resolve() in hashed
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add(node.module)
    project = {m for m in imported if m.split(".")[0] == "dialogue"} - set(worker_builds.NOT_WORKFLOW_CODE)
    assert project
    for module in project:
        file = PROJECT_ROOT / (module.replace(".", "/") + ".py")
        package = PROJECT_ROOT / module.replace(".", "/") / "__init__.py"
        assert (file if file.exists() else package).resolve() in hashed, module
