"""`run_tool`: the call a flow makes once its slots are filled, to a function of the bot's `python_tools`
file (`dialogue.brain.python_tools`)."""

from __future__ import annotations

from pathlib import Path

from temporalio import activity
from temporalio.exceptions import ApplicationError

from dialogue.brain.python_tools import CallContext, flow_tools
from dialogue.model.contracts import ToolCall, ToolResult
from dialogue.platform.bot import BotDefinition

TOOL_MISSING = "ToolMissing"


class ToolActivity:
    def __init__(self, bot: BotDefinition, data_dir: Path) -> None:
        self._bot = bot
        self._data_dir = data_dir
        self._functions = flow_tools(bot)  # raises at the worker's start when a flow's tool has none

    @activity.defn(name="run_tool")
    def run_tool(self, call: ToolCall) -> ToolResult:
        """Run the named tool with the flow's slots, for the conversation's end user (`call.user`)."""
        try:
            tool = self._functions.get(call.name)
            if tool is None:
                raise LookupError(f"no tool named {call.name!r}")
            return tool(CallContext(self._bot, "", self._data_dir, call.user), call.arguments)
        except LookupError as err:
            # A tool or table the bot does not have: configuration, not a passing failure.
            raise ApplicationError(str(err), type=TOOL_MISSING, non_retryable=True) from err
