"""Every recorded history in tests/histories replays against the current workflow code.

A change to `workflows/` that would make running conversations decide differently fails
here; guard such a change with `workflow.patched` (see docs/operations.md) and record a new history.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from temporalio.contrib.pydantic import pydantic_data_converter

from dialogue.brain.generation import build_generators
from dialogue.brain.llm.rebuild import llm_requests
from dialogue.platform.bot import load_bot
from dialogue.platform.settings import Settings
from tests.histories.record import llm_settings
from workflows.replay import load_history, replay

pytestmark = pytest.mark.unit  # pure code: `make check` runs it

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))


def test_there_are_histories_to_replay() -> None:
    assert HISTORIES, "record one with: python -m tests.histories.record NAME"


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_recorded_history_replays(path: Path) -> None:
    result = await replay(await load_history(path.stem, history_file=path))
    assert result.replay_failure is None, f"{path.name}: {result.replay_failure}"


async def test_the_llm_requests_of_a_recorded_history_are_rebuilt_from_it_alone() -> None:
    """v6 was recorded with a stand-in LLM (a knowledge answer, a follow-up, a store outage that left turns
    out of the transcript, a handoff with a person's message): every answer's request, built again from
    the history, is the one the model received, and matches the digest its lineage recorded."""
    runs = sorted(Path(__file__).parent.glob("histories/v6-llm-context-run*.json"))
    histories = [await load_history(path.stem, history_file=path) for path in runs]
    received = [
        orjson.loads(line)
        for line in (Path(__file__).parent / "histories" / "v6-llm-context.requests.jsonl")
        .read_bytes()
        .splitlines()
    ]
    answers = [messages for messages in received if "numbered passages" in messages[0]["content"]]
    settings = llm_settings(Settings(api_key="unused"), "http://127.0.0.1:9/v1")  # never called
    rebuilt = await llm_requests(
        histories, pydantic_data_converter, build_generators(settings, load_bot(settings.bot_path))
    )
    assert len(rebuilt) == len(answers) >= 3
    assert all(request.matches for request in rebuilt)
    assert [request.messages for request in rebuilt] == answers
    assert any(len(request.messages) > 2 for request in rebuilt)  # earlier turns went in
