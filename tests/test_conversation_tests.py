"""`dialogue test`: the demo bot's conversation tests pass through the command as a bot author runs it (its
own dev server, worker and API in-process); a failing test names its step and the first difference; the
JUnit output parses; a malformed file or an unknown name is refused before anything runs; the runner
drives a running API too."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import pytest
from temporalio.client import Client

from api import create_app
from dialogue.apps.testing.runner import Runner
from dialogue.apps.testing.spec import SpecError, load_tests
from dialogue.apps.testing.suite import prepare
from dialogue.platform.bot import load_bot
from dialogue.platform.settings import Settings
from tests.conftest import api_client, worker_for

PROJECT = Path(__file__).resolve().parent.parent
DEMO_TESTS = PROJECT / "examples" / "demo" / "tests"


def dialogue_test(tmp_path: Path, model_dir: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIALOGUE_")} | {
        "DIALOGUE_DATA_DIR": str(tmp_path / "data"),
        "DIALOGUE_NLU_MODEL_DIR": str(model_dir),
        "COLUMNS": "200",
    }
    return subprocess.run(
        [sys.executable, "-m", "dialogue", "test", *arguments],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=170,
    )


@pytest.mark.timeout(180)
def test_the_demo_bots_conversation_tests_pass_and_write_junit(tmp_path: Path, demo_model_dir: Path) -> None:
    junit = tmp_path / "junit.xml"
    run = dialogue_test(tmp_path, demo_model_dir, "--junit", str(junit))
    assert run.returncode == 0, run.stdout + run.stderr
    suites = ElementTree.parse(junit).getroot()
    cases = suites.findall("testsuite/testcase")
    assert len(cases) >= 25 and not suites.findall("testsuite/testcase/failure")
    assert {case.get("classname") for case in cases} == {"agent", "flows", "intents", "llm"}
    assert f"{len(cases)} passed, 0 failed" in run.stdout


@pytest.mark.timeout(180)
def test_a_failing_test_names_its_step_and_first_difference(tmp_path: Path, demo_model_dir: Path) -> None:
    failing = tmp_path / "failing.yaml"
    failing.write_text(
        "tests:\n"
        "  - name: the flow is expected to answer what it does not\n"
        "    steps:\n"
        "      - user: where is my order?\n"
        "        expect: {action: flow_prompt}\n"
        "      - user: NW-482913\n"
        "        expect: {contains: UPS}\n"
        "      - user: thanks\n"
    )
    junit = tmp_path / "junit.xml"
    run = dialogue_test(tmp_path, demo_model_dir, str(failing), "--junit", str(junit))
    assert run.returncode == 1, run.stdout + run.stderr
    assert "step 2 (NW-482913): text: expected it to contain 'UPS'" in run.stdout.replace("\n", " ")
    assert "0 passed, 1 failed" in run.stdout
    [failure] = ElementTree.parse(junit).getroot().findall("testsuite/testcase/failure")
    assert failure.get("message", "").startswith("step 2 (NW-482913): text: expected it to contain 'UPS'")


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (
            "tests:\n  - name: x\n    steps:\n      - user: [unclosed\n",
            "failing.yaml:5: not valid YAML: expected ',' or ']'",
        ),
        (
            "tests:\n  - name: x\n    steps:\n      - user: hi\n        expect: {intnet: greet}\n",
            "failing.yaml:5: tests.0.steps.0.expect.intnet: Extra inputs are not permitted",
        ),
        (
            "tests:\n  - name: x\n    steps:\n      - user: hi\n        expect: {intent: greeting}\n",
            "failing.yaml:2: test 'x', step 1: the bot has no intent 'greeting'",
        ),
        (
            "tests:\n  - name: x\n    steps:\n      - user: hi\n        expect: {documents: [shiping]}\n",
            "the knowledge base has no document 'shiping'",
        ),
    ],
    ids=["not-yaml", "unknown-field", "unknown-intent", "unknown-document"],
)
def test_a_bad_test_file_is_refused_with_its_place_before_anything_runs(
    tmp_path: Path, settings: Settings, content: str, said: str
) -> None:
    failing = tmp_path / "failing.yaml"
    failing.write_text(content)
    with pytest.raises(SpecError) as refused:
        prepare(load_bot(settings.bot_path), [failing])
    assert said in str(refused.value)


async def test_the_runner_drives_a_running_api_and_skips_what_needs_the_in_process_model(
    client: Client, settings: Settings
) -> None:
    tests = load_tests([DEMO_TESTS / "flows.yaml", DEMO_TESTS / "llm.yaml"])
    async with worker_for(client, settings), api_client(create_app(settings, temporal=client)) as http:
        results = [await Runner(http).run(loaded) for loaded in tests]
    flows = [r for r in results if r.loaded.file.name == "flows.yaml"]
    assert flows and all(r.outcome == "passed" for r in flows), [r.first_difference for r in flows]
    scripted = [r for r in results if r.loaded.file.name == "llm.yaml"]
    assert scripted and all(r.outcome == "skipped" for r in scripted)
