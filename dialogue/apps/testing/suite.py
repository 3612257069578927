"""`dialogue test`: load the files, check them against the bot, run every test (in-process or against a
running API) with a progress bar, then print the table of steps and, asked for, write JUnit XML."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from dialogue.apps.testing.runner import Runner, TestResult
from dialogue.apps.testing.spec import LoadedTest, check_names, load_tests
from dialogue.apps.testing.stack import in_process_stack
from dialogue.apps.testing.stand_in_llm import FakeLlm
from dialogue.brain.knowledge.documents import document_id_for, knowledge_files
from dialogue.platform.bot import BotDefinition
from dialogue.platform.flags import FlagSettings
from dialogue.platform.settings import Settings

ApiFor = Callable[[FlagSettings], Awaitable[httpx.AsyncClient | None]]
"""The API whose conversations have these flags; None when the runner cannot set them (a running API)."""


def prepare(bot: BotDefinition, paths: list[Path]) -> list[LoadedTest]:
    """The tests in `paths`, checked against the bot: raises `SpecError` before anything runs."""
    tests = load_tests(paths)
    files = knowledge_files([bot.resolve(bot.knowledge_dir)]) if bot.knowledge_dir else []
    mcp_all = any("*" in server.allow for server in bot.agent.mcp_servers)
    tools = {tool.name for tool in bot.agent.tools} | {
        name for server in bot.agent.mcp_servers for name in server.allow
    }
    check_names(
        tests,
        intents={intent.name for intent in bot.intents},
        documents={document_id_for(path) for path in files},
        tools=None if mcp_all else tools,
    )
    return tests


async def run_suite(
    tests: list[LoadedTest], api_for: ApiFor, stand_in: FakeLlm | None, console: Console
) -> list[TestResult]:
    results: list[TestResult] = []
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("conversation tests", total=sum(len(t.test.steps) for t in tests))
        for loaded in tests:
            progress.update(task, description=loaded.test.name[:40])
            http = await api_for(loaded.flags)
            if http is None:
                result = TestResult(loaded, "skipped", reason="sets feature flags: runs in-process only")
            else:
                result = await Runner(http, stand_in).run(loaded, on_step=lambda: progress.advance(task))
            done = sum(1 for step in result.steps)
            progress.advance(task, len(loaded.test.steps) - done)
            results.append(result)
    return results


async def run_tests(
    tests: list[LoadedTest], settings: Settings, console: Console, *, against: str | None, key: str | None
) -> list[TestResult]:
    """Against the running API at `against` (files that set flags are skipped: its flags are its own), or
    the bot's own stack in this process."""
    if against is not None:
        async with httpx.AsyncClient(
            base_url=against, headers={"Authorization": f"Bearer {key}"}, timeout=60
        ) as http:

            async def running(flags: FlagSettings) -> httpx.AsyncClient | None:
                return None if flags else http

            return await run_suite(tests, running, None, console)
    # A failing step the tests provoke (a model refusing) is logged by the SDK as it happens: not here.
    for noisy in ("temporalio", "uvicorn.error", "dialogue"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    async with in_process_stack(settings.bot_path, settings) as stack:
        return await run_suite(tests, stack.api, stack.stand_in, console)


def print_results(results: list[TestResult], console: Console) -> None:
    table = Table(title="Conversation tests", show_lines=False)
    table.add_column("test")
    table.add_column("step", justify="right")
    table.add_column("result")
    table.add_column("first difference", overflow="fold")
    styles = {"passed": "green", "failed": "bold red", "skipped": "yellow"}
    for result in results:
        where = f"{result.loaded.file.name}:{result.loaded.line} {result.loaded.test.name}"
        failed = next((step for step in result.steps if step.outcome == "failed"), None)
        step = str(failed.number) if failed else str(len(result.steps)) if result.steps else "-"
        outcome = f"[{styles[result.outcome]}]{result.outcome}[/]"
        table.add_row(where, step, outcome, result.first_difference if result.outcome != "passed" else "")
    console.print(table)
    counts = {
        outcome: sum(r.outcome == outcome for r in results) for outcome in ("passed", "failed", "skipped")
    }
    console.print(
        f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped "
        f"({sum(len(r.steps) for r in results)} steps)"
    )
