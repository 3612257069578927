"""Dependencies point one way, checked on every import (at module level, inside functions, under
`if TYPE_CHECKING:` alike). A layer may import its own and those below it:

    apps       dialogue.apps (CLI, supervisor, client, conversation tests, evaluations)   everything
    worker     worker.py                                          workflows, activities, brain, security, platform, model
    api        api/                                               brain, security, platform, model
    workflows  workflows/                                         activities (by name), brain, security, platform, model
    activities activities/                                        brain, security, platform, model
    brain      dialogue.brain (NLU, knowledge, policy, generation, LLM, agent)   security, platform, model
    security   dialogue.security (identity, tokens, privacy, erasure)           platform, model
    platform   dialogue.platform (settings, bot, Temporal client, store, telemetry)   model
               (its migrations' versions also the brain and security: a data migration writes what they read)
    model      dialogue.model (contracts, API models)             nothing of the project

Only the apps sit above `api` and `workflows` (they start a worker and an API). The API runs without the
worker's code."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from temporalio import workflow

from dialogue.model import contracts
from workflows.conversation import ConversationWorkflow

pytestmark = pytest.mark.unit  # pure code: `make check` runs it

ROOT = Path(__file__).resolve().parent.parent
PROJECT = ("api", "workflows", "activities", "dialogue", "worker")
CORE = ["model", "platform", "security", "brain"]
BELOW = {
    "dialogue": set(),  # the package's own __init__
    "model": {"model"},
    "platform": {"platform", "model"},
    "migrations": {"platform", "security", "brain", "model"},
    "security": {"security", "platform", "model"},
    "brain": {"brain", "security", "platform", "model"},
    "activities": {"activities", *CORE},
    "workflows": {"workflows", "activities", *CORE},
    "api": {"api", *CORE},
    "worker": {"worker", "workflows", "activities", *CORE},
    "apps": {"apps", "worker", "api", "workflows", "activities", *CORE},
}
"""What each layer may import of the project."""


def _layer(module: str) -> str:
    parts = module.split(".")
    if parts[0] != "dialogue" or len(parts) == 1:
        return parts[0]
    if module.startswith("dialogue.platform.migrations.versions."):
        return "migrations"  # a data migration writes what the brain's code reads (the full-text rows)
    return "apps" if parts[1] == "__main__" else parts[1]


def _imports(source: str) -> set[str]:
    """Every module of the project the source imports, wherever the import stands."""
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module)
    return {name for name in imported if name.split(".")[0] in PROJECT}


def upward_imports(module: str, source: str) -> set[str]:
    allowed = BELOW[_layer(module)]
    return {name for name in _imports(source) if _layer(name) not in allowed}


def _sources() -> list[tuple[str, Path]]:
    found = [("worker", ROOT / "worker.py")]
    for package in ("api", "workflows", "activities", "dialogue"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found.append((".".join(p for p in parts if p != "__init__"), path))
    return found


@pytest.mark.parametrize(("module", "path"), _sources(), ids=lambda v: v if isinstance(v, str) else "")
def test_a_module_imports_only_its_own_layer_and_those_below(module: str, path: Path) -> None:
    upward = upward_imports(module, path.read_text())
    assert not upward, f"{module} imports {sorted(upward)}, above its layer"


@pytest.mark.parametrize(
    ("module", "planted"),
    [
        ("dialogue.brain.nlu.routing", "def serve():\n    from api.app import create_app\n"),
        ("dialogue.model.contracts", "from dialogue.platform.settings import Settings\n"),
        ("dialogue.platform.store", "from dialogue.brain.nlu import model\n"),
        ("dialogue.security.tokens", "def check():\n    from dialogue.brain.policy import decide\n"),
        ("activities.understand", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import worker\n"),
        ("api.routes.turns", "from dialogue.apps import cli\n"),
    ],
)
def test_the_layer_check_catches_a_planted_upward_import(module: str, planted: str) -> None:
    assert upward_imports(module, planted)


def test_importing_the_api_loads_no_worker_code() -> None:
    probe = (
        "import sys, api.app; print(' '.join(sorted(m for m in sys.modules if m.startswith(("
        "'activities', 'workflows.conversation', 'worker', 'dialogue.brain.nlu.parser', 'dialogue.brain.nlu.classifier', "
        "'dialogue.brain.knowledge.search', 'dialogue.brain.agent', 'dialogue.brain.generation', 'bm25s', 'sklearn', 'torch', "
        "'onnxruntime')))))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert loaded == []


def test_the_workflow_answers_to_the_names_clients_call_it_by() -> None:
    definition = workflow._Definition.must_from_class(ConversationWorkflow)
    assert definition.name == contracts.WORKFLOW_TYPE
    assert set(definition.updates) == {
        value for key, value in vars(contracts.Updates).items() if not key.startswith("_")
    }
    assert set(definition.queries) == {
        value for key, value in vars(contracts.Queries).items() if not key.startswith("_")
    }
    assert set(definition.signals) == {
        value for key, value in vars(contracts.Signals).items() if not key.startswith("_")
    }
