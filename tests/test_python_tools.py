"""A bot's Python tools: registered in a file of the bot's folder that its `python_tools` names, loaded from
there under a module name of its own, checked at the worker's start."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from activities.flow_tools import ToolActivity
from dialogue.brain.python_tools import CallContext, agent_tools, flow_tools
from dialogue.model.contracts import ToolCall
from dialogue.platform.bot import BotDefinition, load_bot

pytestmark = pytest.mark.unit  # pure code: `make check` runs it

TOOLS_FILE = """
from dialogue.model.contracts import ToolResult
from dialogue.brain.python_tools import PythonTools

tools = PythonTools()
SAID = {said!r}


@tools.flow_tool("lookup")
def look_up(context, arguments):
    return ToolResult(ok=True, data={{"said": SAID, **arguments}})


@tools.agent_tool()
def echo(context, arguments):
    return {{"said": SAID, "key": context.idempotency_key}}
"""

FLOW = {
    "name": "find",
    "title": "finding it",
    "slots": [{"name": "thing", "prompt": "What?"}],
    "tool": "lookup",
    "done": "{said}",
}


def bot_in(folder: Path, *, said: str = "one", tools_file: str | None = None, **definition: object) -> Path:
    """A bot in `folder` whose `tools.py` registers `lookup` (flows) and `echo` (agent)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tools.py").write_text(tools_file if tools_file is not None else TOOLS_FILE.format(said=said))
    path = folder / "bot.yaml"
    path.write_text(yaml.safe_dump({"name": f"bot-{said}", "python_tools": "tools.py", **definition}))
    return path


def test_a_bots_tools_are_loaded_from_its_folder_and_two_files_of_one_name_stay_apart(
    tmp_path: Path,
) -> None:
    first = load_bot(bot_in(tmp_path / "first", said="one", flows=[FLOW]))
    second = load_bot(bot_in(tmp_path / "second", said="two", flows=[FLOW]))
    assert flow_tools(first)["lookup"](CallContext(first, "", tmp_path), {"thing": "x"}).data == {
        "said": "one",
        "thing": "x",
    }
    assert flow_tools(second)["lookup"](CallContext(second, "", tmp_path), {}).data == {"said": "two"}
    echo = agent_tools(first)["echo"]
    assert echo(CallContext(first, "key-1", tmp_path), {}) == {"said": "one", "key": "key-1"}
    assert ToolActivity(second, tmp_path).run_tool(
        ToolCall(name="lookup", arguments={"thing": "y"})
    ).data == {
        "said": "two",
        "thing": "y",
    }


def test_a_declared_tool_without_a_function_stops_the_worker_at_its_start(tmp_path: Path) -> None:
    agent = {"tools": [{"name": "refund", "description": "Refund an order."}]}
    bot = load_bot(bot_in(tmp_path, agent=agent, flows=[{**FLOW, "tool": "missing"}]))
    with pytest.raises(ValueError) as raised:
        agent_tools(bot)
    assert str(raised.value) == (
        f"agent.tools: no Python function registered for refund in {tmp_path / 'tools.py'}"
    )
    with pytest.raises(ValueError, match=r"^flows: no Python function registered for missing \(flow find\)"):
        ToolActivity(bot, tmp_path)


def test_a_bot_without_python_tools_says_so_when_it_declares_one() -> None:
    bot = BotDefinition.model_validate(
        {"name": "bare", "agent": {"tools": [{"name": "refund", "description": "Refund."}]}}
    )
    with pytest.raises(ValueError, match="the bot names no `python_tools` file"):
        agent_tools(bot)
    assert flow_tools(BotDefinition(name="no-flows")) == {}


def test_a_file_that_registers_nothing_is_named(tmp_path: Path) -> None:
    bot = load_bot(bot_in(tmp_path, tools_file="TOOLS = {}\n"))
    with pytest.raises(ValueError, match=r"tools.py exports no `tools = PythonTools\(\)`"):
        flow_tools(bot)
