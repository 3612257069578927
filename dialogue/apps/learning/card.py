"""What a publisher adds to a model's card before it decides on the version: the bot's conversation tests
(`dialogue.apps.testing`) and the replay of recorded conversations against the stable version
(`dialogue.apps.evaluation`), each as the card keeps it. Then `failed_gates` decides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dialogue.apps.testing.runner import TestResult
from dialogue.brain.nlu.model_card import (
    ConversationTests,
    ModelCard,
    ReplayEvaluation,
    failed_gates,
    read_card,
    write_card,
)
from dialogue.platform.bot import NluGates


def conversation_tests(results: list[TestResult]) -> ConversationTests:
    """The counts of a `run_suite` / `run_tests` result."""
    return ConversationTests(
        passed=sum(r.outcome == "passed" for r in results),
        failed=sum(r.outcome == "failed" for r in results),
        skipped=sum(r.outcome == "skipped" for r in results),
    )


def replay_evaluation(
    result: dict[str, Any] | None, *, stable_version: str | None, report: Path | None = None
) -> ReplayEvaluation:
    """The summary of `dialogue.apps.evaluation.run.evaluate`'s result against the stable version; `result`
    None (and `stable_version` None) for a first version, which has nothing to be compared with."""
    if result is None:
        return ReplayEvaluation(stable_version=stable_version, report=str(report) if report else None)
    summary = result["summary"]
    return ReplayEvaluation(
        stable_version=stable_version,
        conversations=summary["conversations"],
        turns=summary["turns"],
        changed_turns=summary["changed_turns"],
        changed_intents=summary["changed_intents"],
        changed_actions=summary["changed_actions"],
        rated_down=summary["rated_down"],
        report=str(report) if report else None,
    )


def complete_card(
    folder: Path, gates: NluGates, *, tests: ConversationTests, replay: ReplayEvaluation
) -> tuple[ModelCard, list[str]]:
    """The model's card in `folder` with the tests and the replay written in, and the gates it fails (none:
    the version may be published)."""
    card = read_card(folder).model_copy(update={"conversation_tests": tests, "replay": replay})
    write_card(card, folder)
    return card, failed_gates(card, gates)
