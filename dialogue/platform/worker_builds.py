"""Worker Versioning: which build of the workflow code a worker is, and which build new conversations start on.

With `worker_deployment` set, a worker polls as one build (`worker_build_id`, or the hash of the workflow
code) of that Temporal worker deployment. The deployment's *current* build takes every new conversation;
a *ramping* build takes a share of them. A conversation is pinned: every task of it, and of the runs it
continues as new into, goes to the build it started on, whichever build is current later. So a release
never replays a running conversation on other code; the old build's workers serve until the last
conversation pinned to them ends (a conversation idle for `idle_timeout_seconds` ends). What must change
inside running conversations still goes through `workflow.patched()` (workflows/conversation/patches.py).

Why pinned and not auto-upgrade: an auto-upgrade conversation moves to the new build at its next task and
is replayed there, so every release would rest on the patches being right for every open conversation,
which is the risk versioning removes. A continue-as-new run could start on the new build
(`ContinueAsNewVersioningBehavior.AUTO_UPGRADE`), but that is experimental in the SDK, and a conversation
then changes behaviour in the middle; it stays on one build from first message to last.

The behaviour is the worker's default, not declared on the workflow classes: a workflow declaring one is
refused by an unversioned worker ("versioning behavior cannot be specified without deployment options"),
and unversioned is what runs when `worker_deployment` is unset. `RetentionWorkflow` is pinned too: one
activity, seconds long, so pinning costs nothing, and a build is retired only when no workflow of any
type is open on it.

The calls operators make (`dialogue build list|ramp|current|rollback|move`) are here; the CLI only prints.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from google.protobuf.field_mask_pb2 import FieldMask
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.deployment.v1 import WorkerDeploymentVersion as VersionProto
from temporalio.api.enums.v1 import WorkerDeploymentVersionStatus
from temporalio.api.workflow.v1 import VersioningOverride, WorkflowExecutionOptions
from temporalio.api.workflowservice.v1 import (
    DescribeWorkerDeploymentRequest,
    SetWorkerDeploymentCurrentVersionRequest,
    SetWorkerDeploymentRampingVersionRequest,
    UpdateWorkflowExecutionOptionsRequest,
)
from temporalio.client import Client
from temporalio.common import VersioningBehavior, WorkerDeploymentVersion
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import WorkerDeploymentConfig

from dialogue.platform.settings import Settings

WORKFLOW_CODE = (
    "workflows",
    "dialogue.model.contracts",
    "dialogue.platform.flags",
    "dialogue.brain.llm.followup",
    "dialogue.brain.text",
    "dialogue.brain.agent.declarations",
)
"""What the workflow code is: the workflows package and the project code it runs deterministically (the
messages it exchanges, the turn flags it reads, the follow-up test and the terms it compares, the digest
of a tool call's arguments). Activities are called by name and are not part of it: a change to them
alone is the same build, rolled out in place. tests/test_worker_versioning.py checks that every project
module the workflows import is here or in `NOT_WORKFLOW_CODE`."""

NOT_WORKFLOW_CODE = {
    "dialogue.platform.metrics": "the worker's counters: they decide nothing",
    "dialogue.platform.temporal": "the search attributes' names and the workflow ids, which no build may "
    "change under running conversations anyway (the API finds them by these)",
}
"""Project modules the workflows import that are not hashed into the build id, and why."""

BUILD_ID_LENGTH = 12
IDENTITY = "dialogue build"
POLL_SECONDS = 0.5
T = TypeVar("T")


def workflow_code_files() -> list[Path]:
    """The source files of `WORKFLOW_CODE`, found where Python would import them from."""
    files: list[Path] = []
    for name in WORKFLOW_CODE:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise RuntimeError(f"workflow code {name} not found")
        if spec.submodule_search_locations:
            for folder in spec.submodule_search_locations:
                files += sorted(Path(folder).rglob("*.py"))
        else:
            files.append(Path(spec.origin))
    return files


def code_build_id() -> str:
    """The build id of the workflow code here: a short SHA-256 of its sources. Same code, same build."""
    digest = hashlib.sha256()
    for path in workflow_code_files():
        # The name relative to its top package, so the same code installed elsewhere hashes the same.
        parts = path.parts
        start = max(i for i, part in enumerate(parts) if part in ("workflows", "dialogue"))
        digest.update("/".join(parts[start:]).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:BUILD_ID_LENGTH]


def build_id(settings: Settings) -> str:
    return settings.worker_build_id or code_build_id()


def deployment_config(settings: Settings) -> WorkerDeploymentConfig | None:
    """How the worker polls: as a build of `worker_deployment`, conversations pinned; None is unversioned."""
    if not settings.worker_deployment:
        return None
    return WorkerDeploymentConfig(
        version=WorkerDeploymentVersion(settings.worker_deployment, build_id(settings)),
        use_worker_versioning=True,
        default_versioning_behavior=VersioningBehavior.PINNED,
    )


class BuildError(Exception):
    """An operation on the deployment's builds that cannot be done; the message says why."""


class UnknownBuild(BuildError):
    """No worker of this build has polled the deployment (or the deployment has none)."""


@dataclass(frozen=True)
class Build:
    """One build of the deployment as Temporal sees it."""

    build_id: str
    status: str
    """current, ramping, draining (not routed to, pinned workflows may be open), drained, inactive."""
    created: datetime
    last_current: datetime | None
    """When it last became current; None if it never was."""
    open_workflows: int | None = None
    """Open workflows on it (a pinned one stays until it ends); None when not counted."""


@dataclass(frozen=True)
class Routing:
    """Where new conversations go: the current build, and a ramping one with its share."""

    deployment: str
    current: str | None
    """None: unversioned workers take new conversations."""
    ramping: str | None
    ramp_percent: float
    builds: list[Build]
    conflict_token: bytes

    def build(self, build_id: str) -> Build:
        for build in self.builds:
            if build.build_id == build_id:
                return build
        known = ", ".join(b.build_id for b in self.builds) or "none"
        raise UnknownBuild(f"no build {build_id!r} in deployment {self.deployment!r} (builds: {known})")


_STATUS = {
    WorkerDeploymentVersionStatus.WORKER_DEPLOYMENT_VERSION_STATUS_CURRENT: "current",
    WorkerDeploymentVersionStatus.WORKER_DEPLOYMENT_VERSION_STATUS_RAMPING: "ramping",
    WorkerDeploymentVersionStatus.WORKER_DEPLOYMENT_VERSION_STATUS_DRAINING: "draining",
    WorkerDeploymentVersionStatus.WORKER_DEPLOYMENT_VERSION_STATUS_DRAINED: "drained",
    WorkerDeploymentVersionStatus.WORKER_DEPLOYMENT_VERSION_STATUS_INACTIVE: "inactive",
}


async def describe(client: Client, deployment: str, *, count_open: bool = False) -> Routing:
    """The deployment's builds and routing; `count_open` also counts the open workflows on each build."""
    try:
        response = await client.workflow_service.describe_worker_deployment(
            DescribeWorkerDeploymentRequest(namespace=client.namespace, deployment_name=deployment)
        )
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise UnknownBuild(f"no deployment {deployment!r}: no worker of it has polled yet") from err
        raise
    info = response.worker_deployment_info
    routing = info.routing_config
    builds = []
    for summary in sorted(info.version_summaries, key=lambda s: s.create_time.ToDatetime()):
        build_id = summary.deployment_version.build_id
        builds.append(
            Build(
                build_id=build_id,
                status=_STATUS.get(summary.status, "unknown"),
                created=summary.create_time.ToDatetime(),
                last_current=summary.last_current_time.ToDatetime()
                if summary.HasField("last_current_time")
                else None,
                open_workflows=await count_open_workflows(client, deployment, build_id)
                if count_open
                else None,
            )
        )
    return Routing(
        deployment=deployment,
        current=routing.current_deployment_version.build_id or None,
        ramping=routing.ramping_deployment_version.build_id or None,
        ramp_percent=routing.ramping_version_percentage,
        builds=builds,
        conflict_token=response.conflict_token,
    )


def _open_on(deployment: str, build_id: str) -> str:
    return f"TemporalWorkerDeploymentVersion = '{deployment}:{build_id}' AND ExecutionStatus = 'Running'"


async def count_open_workflows(client: Client, deployment: str, build_id: str) -> int:
    """Open workflows on a build, from visibility (a second or so behind): 0 means it can be retired."""
    return (await client.count_workflows(_open_on(deployment, build_id))).count


async def make_current(client: Client, deployment: str, build_id: str) -> str | None:
    """Send every new conversation to `build_id` (ending any ramp of it); returns the build current before.

    Refused unless a worker of the build has polled: a current build without workers stalls every new
    conversation."""
    routing = await describe(client, deployment)
    routing.build(build_id)
    response = await _call(
        client.workflow_service.set_worker_deployment_current_version(
            SetWorkerDeploymentCurrentVersionRequest(
                namespace=client.namespace,
                deployment_name=deployment,
                build_id=build_id,
                conflict_token=routing.conflict_token,
                identity=IDENTITY,
            )
        )
    )
    return response.previous_deployment_version.build_id or None


async def make_current_when_polled(
    client: Client, deployment: str, build_id: str, *, within: float, initial: bool = False
) -> tuple[bool, str | None]:
    """`make_current`, waiting up to `within` seconds for the build's workers to poll (its workflow and
    activity task queues register one after the other; until both have, Temporal refuses). With
    `initial`, only if no build is current yet: a first start, which must not undo a release. Returns
    whether it changed anything, and the build current before."""
    deadline = time.monotonic() + within
    while True:
        try:
            if initial:
                current = (await describe(client, deployment)).current
                if current is not None:
                    return False, current
            return True, await make_current(client, deployment, build_id)
        except BuildError:
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(POLL_SECONDS)


async def ramp(client: Client, deployment: str, build_id: str, percent: float) -> None:
    """Send `percent` of new conversations to `build_id`, the rest to the current build."""
    if not 0 <= percent <= 100:
        raise BuildError(f"a ramp is 0 to 100 percent, not {percent}")
    routing = await describe(client, deployment)
    routing.build(build_id)
    if build_id == routing.current:
        raise BuildError(f"build {build_id!r} is current already: it takes every new conversation")
    await _call(
        client.workflow_service.set_worker_deployment_ramping_version(
            SetWorkerDeploymentRampingVersionRequest(
                namespace=client.namespace,
                deployment_name=deployment,
                build_id=build_id,
                percentage=percent,
                conflict_token=routing.conflict_token,
                identity=IDENTITY,
            )
        )
    )


@dataclass(frozen=True)
class Rollback:
    """What `rollback` did: stopped a ramp, or made the previous current build current again."""

    stopped_ramp: str | None = None
    current: str | None = None
    previous: str | None = None


async def rollback(client: Client, deployment: str) -> Rollback:
    """Undo the last release step. A build being ramped stops taking new conversations (the current build
    takes them all); with no ramp, the build that was current before the current one is made current
    again. Conversations already on a build stay there: they are pinned."""
    routing = await describe(client, deployment)
    if routing.ramping is not None:
        await _call(
            client.workflow_service.set_worker_deployment_ramping_version(
                SetWorkerDeploymentRampingVersionRequest(
                    namespace=client.namespace,
                    deployment_name=deployment,
                    conflict_token=routing.conflict_token,
                    identity=IDENTITY,
                )
            )
        )
        return Rollback(stopped_ramp=routing.ramping, current=routing.current)
    earlier = [b for b in routing.builds if b.build_id != routing.current and b.last_current is not None]
    if not earlier:
        raise BuildError(f"no build of {deployment!r} was current before {routing.current!r}")
    previous = max(earlier, key=lambda b: b.last_current or b.created).build_id
    await make_current(client, deployment, previous)
    return Rollback(current=previous, previous=routing.current)


async def move_open_workflows(client: Client, deployment: str, from_build: str, to_build: str) -> int:
    """Pin the open workflows of `from_build` to `to_build`; how many were moved.

    The escape hatch for retiring a build before its conversations end: they are replayed on the new
    build's code at their next task, which is safe only as far as the patches cover the difference (the
    replay tests check recorded histories against the code). `dialogue up` does it at every start: it runs
    one build at a time, so nothing else would serve the conversations of the build it ran before."""
    routing = await describe(client, deployment)
    routing.build(from_build)
    routing.build(to_build)
    override = VersioningOverride(
        pinned=VersioningOverride.PinnedOverride(
            behavior=VersioningOverride.PinnedOverrideBehavior.PINNED_OVERRIDE_BEHAVIOR_PINNED,
            version=VersionProto(deployment_name=deployment, build_id=to_build),
        )
    )
    moved = 0
    async for execution in client.list_workflows(_open_on(deployment, from_build)):
        try:
            await client.workflow_service.update_workflow_execution_options(
                UpdateWorkflowExecutionOptionsRequest(
                    namespace=client.namespace,
                    workflow_execution=WorkflowExecution(workflow_id=execution.id, run_id=execution.run_id),
                    workflow_execution_options=WorkflowExecutionOptions(versioning_override=override),
                    update_mask=FieldMask(paths=["versioning_override"]),
                    identity=IDENTITY,
                )
            )
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND:  # ended since it was listed: nothing to move
                raise
            continue
        moved += 1
    return moved


async def _call(call: Awaitable[T]) -> T:
    """A routing change, with Temporal's refusals (no pollers yet, a concurrent change) as `BuildError`, and
    a change the server gave up on in time (its deployment's own workflow busy) as one to make again."""
    try:
        return await call
    except RPCError as err:
        if err.status in _REFUSALS:
            raise BuildError(f"Temporal refused: {err.message}") from err
        if err.status in _UNFINISHED:
            raise BuildError(f"{UNFINISHED}: {err.message}") from err
        raise


UNFINISHED = "Temporal did not finish the routing change in time; make it again"
_UNFINISHED = (RPCStatusCode.CANCELLED, RPCStatusCode.DEADLINE_EXCEEDED)


_REFUSALS = (
    RPCStatusCode.FAILED_PRECONDITION,
    RPCStatusCode.INVALID_ARGUMENT,
    RPCStatusCode.ABORTED,
    RPCStatusCode.NOT_FOUND,
    RPCStatusCode.ALREADY_EXISTS,
)


async def connect_operator(settings: Settings) -> Client:
    """A client for routing changes and counts: it reads no payloads, so it needs no payload keys."""
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        tls=settings.temporal_tls_config(),
    )
