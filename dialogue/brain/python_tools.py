"""A bot's tools written in Python: the functions its flows call once their slots are filled, and those its
agent calls (`agent.tools` of kind `python`). They live with the bot, in the file its `python_tools` names
(the demo's: examples/demo/shop.py), loaded from the bot's folder (`dialogue.platform.bot.load_bot_module`). The file
registers them on a `PythonTools` it exports as `tools`:

    tools = PythonTools()

    @tools.flow_tool("order_status")
    def look_up_order(context: CallContext, arguments: dict[str, Any]) -> ToolResult: ...

    @tools.agent_tool("start_return")
    def start_return(context: CallContext, arguments: dict[str, Any]) -> dict[str, Any]: ...

Both take the call's context: the bot, the verified end user the conversation belongs to (`user`; None
when the integrator's server speaks for its tenant), where to keep state, and for an agent's tool the call's
idempotency key (the same on every attempt of the call). A tool that reads or changes a user's data checks
that it is theirs when `user` is set, and answers as if it did not exist otherwise. A flow's tool takes the
flow's slots and returns a `ToolResult` (not ok, with the slot to ask for again, when the value found
nothing). An agent's tool takes its arguments, already checked against the tool's schema, and returns what
the model is shown (JSON-serialisable); an expected failure (an unknown order) raises `ToolFailed`: the
model is told. The worker loads the file at its start, and stops there when
a tool the bot declares has no function.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from dialogue.model.contracts import ToolResult
from dialogue.platform.bot import BotDefinition, load_bot_module

EXPORT = "tools"
"""The name under which a bot's file exports its `PythonTools`."""


class ToolFailed(Exception):
    """What the tool could not do, for the model to read (not retried)."""


@dataclass(frozen=True)
class CallContext:
    """What a tool knows of its call besides its arguments."""

    bot: BotDefinition
    idempotency_key: str
    """The same on every attempt of an agent's call; empty for a flow's tool (flows' tools only read)."""
    data_dir: Path
    """Where tools that keep state keep it (the demo's shop)."""
    user: str | None = None
    """The verified end user the conversation belongs to, whom the tool acts for: from their end-user token
    (or the integrator's server naming them), never from what the user typed or the model asked. None: the
    integrator's server speaks for its tenant."""


AgentTool = Callable[[CallContext, dict[str, Any]], Any]
FlowTool = Callable[[CallContext, dict[str, Any]], ToolResult]
_Agent = TypeVar("_Agent", bound=AgentTool)
_Flow = TypeVar("_Flow", bound=FlowTool)


@dataclass
class PythonTools:
    """The functions a bot's file registers, by the name the bot gives them: a flow's `tool`, an agent
    tool's `function` (else its `name`)."""

    flow: dict[str, FlowTool] = field(default_factory=dict)
    agent: dict[str, AgentTool] = field(default_factory=dict)

    def flow_tool(self, name: str | None = None) -> Callable[[_Flow], _Flow]:
        """Register a flow's tool, by `name` (the function's own when unset)."""

        def register(function: _Flow) -> _Flow:
            _add(self.flow, name or function.__name__, function, "flow")
            return function

        return register

    def agent_tool(self, name: str | None = None) -> Callable[[_Agent], _Agent]:
        """Register an agent's `python` tool, by `name` (the function's own when unset)."""

        def register(function: _Agent) -> _Agent:
            _add(self.agent, name or function.__name__, function, "agent")
            return function

        return register


def _add(registry: dict[str, Any], name: str, function: Any, kind: str) -> None:
    if name in registry:
        raise ValueError(f"two {kind} tools are registered as {name!r}")
    registry[name] = function


def registered(bot: BotDefinition) -> PythonTools:
    """What the bot's `python_tools` file registers; nothing when it names none."""
    module = load_bot_module(bot)
    if module is None:
        return PythonTools()
    found = getattr(module, EXPORT, None)
    if not isinstance(found, PythonTools):
        raise ValueError(
            f"python_tools: {bot.python_tools} exports no `{EXPORT} = PythonTools()` "
            "(dialogue.brain.python_tools) to register its functions on"
        )
    return found


def agent_tools(bot: BotDefinition) -> dict[str, AgentTool]:
    """The functions of the bot's `python` agent tools; raises, at the worker's start rather than at a
    user's turn, when one has none."""
    functions = registered(bot).agent
    missing = [
        tool.name
        for tool in bot.agent.tools
        if tool.kind == "python" and (tool.function or tool.name) not in functions
    ]
    if missing:
        raise ValueError(f"agent.tools: no Python function registered for {', '.join(missing)}{_in(bot)}")
    return functions


def flow_tools(bot: BotDefinition) -> dict[str, FlowTool]:
    """The functions of the bot's flows' tools; raises, at the worker's start, when one has none."""
    functions = registered(bot).flow
    missing = [f"{flow.tool} (flow {flow.name})" for flow in bot.flows if flow.tool not in functions]
    if missing:
        raise ValueError(f"flows: no Python function registered for {', '.join(missing)}{_in(bot)}")
    return functions


def _in(bot: BotDefinition) -> str:
    """Where the functions were looked for, for an error message."""
    if bot.python_tools is None:
        return " (the bot names no `python_tools` file to register them in)"
    return f" in {bot.resolve(bot.python_tools)}"
