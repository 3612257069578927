"""Every recorded history in tests/histories replays against the current workflow code.

A change to `workflows/` that would make running conversations decide differently fails
here; guard such a change with `workflow.patched` (see the README) and record a new history.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from workflows.replay import load_history, replay

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))


def test_there_are_histories_to_replay() -> None:
    assert HISTORIES, "record one with: python -m tests.histories.record NAME"


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_recorded_history_replays(path: Path) -> None:
    result = await replay(await load_history(path.stem, history_file=path))
    assert result.replay_failure is None, f"{path.name}: {result.replay_failure}"
