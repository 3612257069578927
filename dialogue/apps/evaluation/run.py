"""One evaluation: the recorded conversations re-sent to the candidate, compared turn by turn, judged if
asked, summed up, gated, and written as a report."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from dialogue.apps.evaluation.candidate import CandidateTurn, candidate
from dialogue.apps.evaluation.compare import TurnComparison, compare, gate, sides, summary
from dialogue.apps.evaluation.judge import Judge
from dialogue.apps.evaluation.report import write_report
from dialogue.apps.evaluation.source import RecordedConversation, RecordedTurn
from dialogue.brain.generation.openai_chat import ChatClient
from dialogue.platform.db import get_engine
from dialogue.platform.settings import Settings


@dataclass
class JudgeEndpoint:
    base_url: str
    model: str
    api_key: str | None = None


async def evaluate(
    deployment: Settings,
    candidate_bot: Path,
    conversations: list[RecordedConversation],
    *,
    report: Path,
    conditions: list[str],
    judge: JudgeEndpoint | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Re-send, compare, judge, report; the result (with `gate`: the conditions that failed)."""
    gate({"turns": 1} | summary([]), conditions)  # a condition that cannot be read stops before any work
    console = console or Console()
    comparisons: list[TurnComparison] = []
    recorded: list[RecordedTurn] = []
    answers: list[CandidateTurn] = []
    async with candidate(deployment, candidate_bot) as side:
        with Progress(
            TextColumn("re-sending"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as progress:
            task = progress.add_task("turns", total=sum(len(c.turns) for c in conversations))
            for number, conversation in enumerate(conversations):
                replies = await side.resend(conversation, number)
                for before, after in zip(conversation.turns, replies, strict=True):
                    comparisons.append(compare(conversation.key, before, after))
                recorded += conversation.turns
                answers += replies
                progress.advance(task, len(conversation.turns))
        if judge is not None:
            client = ChatClient(
                base_url=judge.base_url, model=judge.model, api_key=judge.api_key, timeout_seconds=60
            )
            judging = Judge(client, get_engine(side.settings.resolved_database_url))
            for turn, answer in zip(comparisons, answers, strict=True):
                if turn.changes:  # an unchanged answer is the recorded one: nothing to judge
                    chunks = [
                        d["chunk_id"] for d in answer.lineage.get("documents") or [] if d.get("chunk_id")
                    ]
                    turn.judge = await judging.judge(turn, chunks)
        run_id = side.run_id
    result: dict[str, Any] = {
        "run_id": run_id,
        "candidate_bot": str(candidate_bot),
        "summary": summary(comparisons),
        "sides": sides(recorded, answers),
        "conditions": conditions,
    }
    if judge is not None:
        verdicts = [t.judge for t in comparisons if t.judge and "verdict" in t.judge]
        result["summary"]["judged"] = len(verdicts)
        for verdict in ("better", "worse", "same"):
            result["summary"][f"judged_{verdict}"] = sum(1 for v in verdicts if v["verdict"] == verdict)
        result["summary"]["judged_unsupported"] = sum(1 for v in verdicts if not v.get("supported", True))
    result["gate"] = gate(result["summary"], conditions)
    write_report(report, result, comparisons)
    return result


def print_summary(result: dict[str, Any], report: Path, console: Console) -> None:
    table = Table(title=f"Evaluation on recorded conversations {result['run_id']}")
    table.add_column("")
    table.add_column("value", justify="right")
    for name, value in result["summary"].items():
        if name != "latency_ms":
            table.add_row(name.replace("_", " "), str(value))
    latency = result["summary"]["latency_ms"]
    table.add_row(
        "latency p50 recorded → candidate (ms)",
        f"{latency['recorded']['p50']} → {latency['candidate']['p50']}",
    )
    console.print(table)
    console.print(f"report: {report / 'report.html'} and {report / 'report.json'}")
    for failed in result["gate"]:
        console.print(f"[bold red]gate:[/] {failed}")
