"""Conversation tests: the YAML a bot author writes beside the bot (`examples/demo/tests/*.yaml`), read and
checked before anything runs.

    flags: {agent: true}               # feature flags for the file's conversations (optional)
    tests:
      - name: the order flow survives a detour
        slots: {}                      # known before the first turn (optional)
        llm:                           # what a stand-in model says, in order (optional; in-process only)
          - text: "It costs 4.90 euros."
          - tool_calls: [{name: order_status, arguments: {order_id: NW-482913}}]
        steps:
          - user: where is my order?
            expect: {intent: order_status, action: flow_prompt, flow: order_lookup}
          - approve: {tool: start_return, approve: true}      # decide a call the agent waits to make
            expect: {contains: "return"}

A file that is not YAML, or does not fit this shape, is refused with its file, line and what is wrong;
an expectation naming an intent, a document or a tool the bot does not have is refused too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dialogue.model.contracts import OUT_OF_SCOPE, Action
from dialogue.platform.flags import FlagSettings

NOT_RUN_INTENT = "none"
"""The intent of a turn the bot did not run (a person held the conversation, or it was interrupted)."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ToolCallExpected(Strict):
    name: str
    arguments: dict[str, Any] = {}
    """Each given argument must have this value (others may be there too)."""


class Expect(Strict):
    """What the bot's answer to a step must be; every field is optional."""

    intent: str | None = None
    action: Action | None = None
    flow: str | None = None
    """The active flow after the step (`none` for no flow)."""
    slots: dict[str, Any] | None = None
    """Each given slot must have this value after the step."""
    handoff: bool | None = None
    """A person holds the conversation after the step."""
    degraded: bool | None = None
    text: str | None = None
    """The whole reply text."""
    contains: str | list[str] | None = None
    not_contains: str | list[str] | None = None
    regex: str | None = None
    documents: list[str] | None = None
    """Document ids the answer cites (at least these)."""
    tool_calls: list[ToolCallExpected] | None = None
    """Calls the agent asked for in this step, in order (at least these)."""
    approval_pending: list[str] | bool | None = None
    """Tool names waiting for approval after the step; true: some; false: none."""
    data: dict[str, Any] | None = None
    """Fields of a structured reply."""


class Approve(Strict):
    tool: str
    """The pending call to decide, by its tool's name (the oldest one of that tool)."""
    approve: bool = True
    note: str | None = None


class Step(Strict):
    user: str | None = None
    approve: Approve | None = None
    expect: Expect = Expect()

    @model_validator(mode="after")
    def _one_kind(self) -> Step:
        if (self.user is None) == (self.approve is None):
            raise ValueError("a step is either `user: text` or `approve: {tool: …}`")
        return self


class ScriptedCall(Strict):
    name: str
    arguments: dict[str, Any] = {}


class Said(Strict):
    """One answer of the stand-in model."""

    text: str = ""
    tool_calls: list[ScriptedCall] = []
    status: int = 200
    delay: float = Field(default=0.0, ge=0, le=60)


class ConversationTest(Strict):
    name: str
    slots: dict[str, str] = {}
    llm: list[Said] | None = None
    """What the stand-in model says, in order (the last answer repeats). Tests with a script run only
    against the in-process stack, whose model is the stand-in."""
    steps: list[Step] = Field(min_length=1)


class TestFile(Strict):
    flags: FlagSettings = {}
    """Feature flags for this file's conversations (the demo's agent mode: `{agent: true}`), on top of the
    deployment's. Files with flags run only in-process, where the runner can set them."""
    tests: list[ConversationTest] = Field(min_length=1)


class LoadedTest(BaseModel):
    file: Path
    line: int
    test: ConversationTest
    flags: FlagSettings = {}


class SpecError(Exception):
    """A test file that cannot run: the message names the file, the line and what is wrong."""


def load_tests(paths: list[Path]) -> list[LoadedTest]:
    """Every test in the files (a folder: its `*.yaml`, `*.yml`), in order."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted([*path.glob("*.yaml"), *path.glob("*.yml")])
        elif path.exists():
            files.append(path)
        else:
            raise SpecError(f"{path}: no such file or folder")
    if not files:
        raise SpecError(f"no test files in {', '.join(str(p) for p in paths)}")
    loaded: list[LoadedTest] = []
    for file in files:
        loaded += _load_file(file)
    return loaded


def _load_file(file: Path) -> list[LoadedTest]:
    text = file.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{file}:{mark.line + 1}" if mark is not None else str(file)
        raise SpecError(f"{where}: not valid YAML: {getattr(err, 'problem', err)}") from None
    try:
        parsed = TestFile.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        location = ".".join(str(part) for part in first["loc"])
        raise SpecError(f"{file}:{_line(node, first['loc'])}: {location}: {first['msg']}") from None
    lines = [_line(node, ("tests", n)) for n in range(len(parsed.tests))]
    return [
        LoadedTest(file=file, line=line, test=test, flags=parsed.flags)
        for test, line in zip(parsed.tests, lines, strict=True)
    ]


def _line(node: Any, location: tuple[Any, ...]) -> int:
    """The line of the deepest YAML node on the error's path (1-based)."""
    found = node
    for part in location:
        child = None
        if isinstance(found, yaml.MappingNode):
            child = next((value for key, value in found.value if key.value == part), None)
        elif isinstance(found, yaml.SequenceNode) and isinstance(part, int) and part < len(found.value):
            child = found.value[part]
        if child is None:
            break
        found = child
    return int(found.start_mark.line) + 1 if found is not None else 1


def check_names(
    tests: list[LoadedTest], *, intents: set[str], documents: set[str] | None, tools: set[str] | None
) -> None:
    """Refuse expectations that name what the bot does not have (None: not known, not checked)."""
    known_intents = intents | {OUT_OF_SCOPE, NOT_RUN_INTENT}
    for loaded in tests:
        for number, step in enumerate(loaded.test.steps, start=1):
            where = f"{loaded.file}:{loaded.line}: test {loaded.test.name!r}, step {number}"
            expect = step.expect
            if expect.intent is not None and expect.intent not in known_intents:
                raise SpecError(f"{where}: the bot has no intent {expect.intent!r}")
            missing = [d for d in expect.documents or [] if documents is not None and d not in documents]
            if missing:
                raise SpecError(
                    f"{where}: the knowledge base has no document {', '.join(map(repr, missing))}"
                )
            named = [call.name for call in expect.tool_calls or []]
            named += [step.approve.tool] if step.approve else []
            named += expect.approval_pending if isinstance(expect.approval_pending, list) else []
            unknown = [name for name in named if tools is not None and name not in tools]
            if unknown:
                raise SpecError(f"{where}: the bot has no tool {', '.join(map(repr, unknown))}")


Outcome = Literal["passed", "failed", "skipped"]
