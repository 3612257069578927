"""`run_tool`: the call a flow makes once its slots are filled."""

from __future__ import annotations

from temporalio import activity
from temporalio.exceptions import ApplicationError

from dialogue import tools
from dialogue.bot import BotDefinition
from dialogue.contracts import ToolCall, ToolResult


class ToolActivity:
    def __init__(self, bot: BotDefinition) -> None:
        self._bot = bot

    @activity.defn(name="run_tool")
    def run_tool(self, call: ToolCall) -> ToolResult:
        """Run the named tool with the flow's slots."""
        try:
            return tools.run(self._bot, call)
        except LookupError as err:
            # A tool or table the bot does not have: configuration, not a passing failure.
            raise ApplicationError(str(err), type="ToolMissing", non_retryable=True) from err
