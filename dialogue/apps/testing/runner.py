"""Running conversation tests over the v1 API, the way a client talks to the bot: each test is a new
conversation, each step a turn (or a decision on an approval), each answer checked against the step's
expectations. The same runner serves the in-process stack (`dialogue.apps.testing.stack`) and a running API.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from xml.etree import ElementTree

import httpx

from dialogue.apps.client import AsyncDialogueClient, DialogueError
from dialogue.apps.testing.spec import Expect, LoadedTest, Outcome, Step
from dialogue.apps.testing.stand_in_llm import FakeLlm, Plan


@dataclass
class StepResult:
    number: int
    said: str
    outcome: Outcome
    differences: list[str] = field(default_factory=list)
    milliseconds: float = 0.0


@dataclass
class TestResult:
    loaded: LoadedTest
    outcome: Outcome
    steps: list[StepResult] = field(default_factory=list)
    reason: str = ""
    """Why the test was skipped, or the error that stopped it."""
    conversation_id: str = ""

    @property
    def first_difference(self) -> str:
        failed = next((step for step in self.steps if step.outcome == "failed"), None)
        if failed is not None:
            return f"step {failed.number} ({failed.said}): {failed.differences[0]}"
        return self.reason


class Runner:
    """Runs tests against the API behind `http` (its key set), through the typed client; `stand_in` is
    the model of the stack, when the stack is this process's (tests with an `llm:` script need it)."""

    def __init__(self, http: httpx.AsyncClient, stand_in: FakeLlm | None = None) -> None:
        self._api = AsyncDialogueClient.wrapping(http)
        self._stand_in = stand_in

    async def run(self, loaded: LoadedTest, on_step: Any = None) -> TestResult:
        test = loaded.test
        conversation_id = f"convtest-{_slug(test.name)}-{uuid.uuid4().hex[:8]}"
        result = TestResult(loaded, "passed", conversation_id=conversation_id)
        if test.llm is not None:
            if self._stand_in is None:
                return TestResult(loaded, "skipped", reason="scripts the model: runs in-process only")
            self._stand_in.plans = [
                Plan(
                    text=said.text,
                    tool_calls=[(call.name, call.arguments) for call in said.tool_calls],
                    status=said.status,
                    delay=said.delay,
                )
                for said in test.llm
            ]
        try:
            if test.slots:
                await self._api.create_conversation(conversation_id, slots=test.slots)
            for number, step in enumerate(test.steps, start=1):
                started = time.perf_counter()
                answer = await self._step(conversation_id, step)
                state = await self._state(conversation_id) if _needs_state(step.expect) else {}
                differences = compare(step.expect, answer, state)
                result.steps.append(
                    StepResult(
                        number,
                        step.user
                        if step.user is not None
                        else f"approve {step.approve.tool}"
                        if step.approve
                        else "",
                        "failed" if differences else "passed",
                        differences,
                        (time.perf_counter() - started) * 1000,
                    )
                )
                if on_step is not None:
                    on_step()
                if differences:
                    result.outcome = "failed"
                    break  # the next steps depend on this one
        except (DialogueError, RunError) as err:
            result.outcome, result.reason = "failed", f"{err.__class__.__name__}: {err}"
        return result

    async def _step(self, conversation_id: str, step: Step) -> dict[str, Any]:
        if step.user is not None:
            reply = await self._api.send_turn(conversation_id, step.user)
            return reply.model_dump(mode="json")
        assert step.approve is not None
        state = await self._state(conversation_id)
        call = next((p for p in state.get("pending_approvals", []) if p["name"] == step.approve.tool), None)
        if call is None:
            raise RunError(f"no call of {step.approve.tool} waits for approval")
        decided = await self._api.decide_approval(
            conversation_id, call["call_id"], step.approve.approve, note=step.approve.note
        )
        # The agent went on once nothing of its step waited: its answer is what this step is checked on.
        if decided.reply is not None:
            return decided.reply.model_dump(mode="json")
        return {"approvals": [pending.model_dump(mode="json") for pending in decided.pending]}

    async def _state(self, conversation_id: str) -> dict[str, Any]:
        return (await self._api.conversation(conversation_id)).model_dump(mode="json")


class RunError(Exception):
    """The API refused a step (the message has its status and error)."""


def _needs_state(expect: Expect) -> bool:
    return expect.flow is not None or expect.slots is not None or expect.action is not None


def compare(expect: Expect, answer: dict[str, Any], state: dict[str, Any]) -> list[str]:
    """What differs between the expectation and the answer (and the state after it), in words."""
    found: list[str] = []
    reply = answer.get("reply") or {}
    nlu = answer.get("nlu") or {}
    text = str(reply.get("text", ""))

    def differ(what: str, expected: Any, got: Any) -> None:
        if expected is not None and expected != got:
            found.append(f"{what}: expected {expected!r}, got {got!r}")

    differ("intent", expect.intent, (nlu.get("intent") or {}).get("name"))
    if expect.action is not None:  # what the bot did (the policy's decision), not the intent's default
        differ("action", expect.action, state.get("last_action"))
    if expect.flow is not None:
        differ("flow", expect.flow, state.get("active_flow") or "none")
    for name, value in (expect.slots or {}).items():
        differ(f"slot {name}", value, (state.get("slots") or {}).get(name))
    if expect.handoff is not None:
        differ("handoff", expect.handoff, answer.get("held_by") == "agent")
    differ("degraded", expect.degraded, answer.get("degraded"))
    differ("text", expect.text, text)
    for part in _listed(expect.contains):
        if part not in text:
            found.append(f"text: expected it to contain {part!r}, got {text!r}")
    for part in _listed(expect.not_contains):
        if part in text:
            found.append(f"text: expected it not to contain {part!r}, got {text!r}")
    if expect.regex is not None and re.search(expect.regex, text) is None:
        found.append(f"text: expected a match of /{expect.regex}/, got {text!r}")
    cited = [source.get("document_id") for source in reply.get("sources") or []]
    missing = [document for document in expect.documents or [] if document not in cited]
    if missing:
        found.append(f"documents: expected {missing!r} among the cited ones, got {cited!r}")
    if expect.tool_calls is not None:
        made = [call for step in (answer.get("lineage") or {}).get("agent") or [] for call in step["calls"]]
        for wanted in expect.tool_calls:
            if not any(
                call["name"] == wanted.name
                and all(call["arguments"].get(k) == v for k, v in wanted.arguments.items())
                for call in made
            ):
                calls = [f"{c['name']}({c['arguments']})" for c in made]
                found.append(f"tool calls: expected {wanted.name}({wanted.arguments}), got {calls or 'none'}")
    pending = [call["name"] for call in answer.get("approvals") or []]
    if isinstance(expect.approval_pending, bool):
        differ("approval pending", expect.approval_pending, bool(pending))
    elif expect.approval_pending is not None:
        differ("approvals pending", sorted(expect.approval_pending), sorted(pending))
    for name, value in (expect.data or {}).items():
        differ(f"data {name}", value, (reply.get("data") or {}).get(name))
    return found


def _listed(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else value


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40] or "test"


def junit_xml(results: list[TestResult]) -> bytes:
    """The results as JUnit XML: a suite per file, a case per test, its first difference as the failure."""
    suites = ElementTree.Element("testsuites")
    for file in dict.fromkeys(result.loaded.file for result in results):
        mine = [result for result in results if result.loaded.file == file]
        suite = ElementTree.SubElement(
            suites,
            "testsuite",
            name=str(file),
            tests=str(len(mine)),
            failures=str(sum(r.outcome == "failed" for r in mine)),
            skipped=str(sum(r.outcome == "skipped" for r in mine)),
        )
        for result in mine:
            case = ElementTree.SubElement(
                suite,
                "testcase",
                classname=file.stem,
                name=result.loaded.test.name,
                file=str(file),
                line=str(result.loaded.line),
                time=f"{sum(step.milliseconds for step in result.steps) / 1000:.3f}",
            )
            if result.outcome == "failed":
                failure = ElementTree.SubElement(case, "failure", message=result.first_difference)
                failure.text = (
                    "\n".join(
                        f"step {step.number} ({step.said}): " + "; ".join(step.differences)
                        for step in result.steps
                        if step.differences
                    )
                    or result.reason
                )
            elif result.outcome == "skipped":
                ElementTree.SubElement(case, "skipped", message=result.reason)
    return ElementTree.tostring(suites, encoding="utf-8", xml_declaration=True)
