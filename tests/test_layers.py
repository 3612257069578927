"""Dependencies point one way, checked on every import (at module level, inside functions, under
`if TYPE_CHECKING:` alike):

    apps (dialogue.cli, supervisor, testing, evaluation)  may import anything of the project
    worker                                                 workflows, activities, dialogue
    api                                                    dialogue
    workflows                                              activities (by name), dialogue
    activities                                             dialogue
    dialogue (platform, security, the brain)               dialogue, the model
    the model (dialogue.contracts, dialogue.api_models)    the model only

Only the apps sit above `api` and `workflows` (they start a worker and an API). The API runs without the
worker's code."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from temporalio import workflow

from dialogue import contracts
from workflows.conversation import ConversationWorkflow

pytestmark = pytest.mark.unit  # pure code: `make check` runs it

ROOT = Path(__file__).resolve().parent.parent
PROJECT = ("api", "workflows", "activities", "dialogue", "worker")

MODEL = ("dialogue.contracts", "dialogue.api_models")
APPS = ("dialogue.cli", "dialogue.__main__", "dialogue.supervisor", "dialogue.testing", "dialogue.evaluation")
BELOW = {
    "model": {"model"},
    "dialogue": {"dialogue", "model"},
    "activities": {"activities", "dialogue", "model"},
    "workflows": {"workflows", "activities", "dialogue", "model"},
    "api": {"api", "dialogue", "model"},
    "worker": {"worker", "workflows", "activities", "dialogue", "model"},
    "apps": {"apps", "worker", "api", "workflows", "activities", "dialogue", "model"},
}
"""What each layer may import of the project."""


def _layer(module: str) -> str:
    if module in MODEL or module.startswith(tuple(f"{m}." for m in MODEL)):
        return "model"
    if module in APPS or module.startswith(tuple(f"{m}." for m in APPS)):
        return "apps"
    return module.split(".")[0]


def _imports(source: str) -> set[str]:
    """Every module of the project the source imports, wherever the import stands."""
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module)
            # `from dialogue import contracts` imports the module dialogue.contracts
            imported.update(
                f"{node.module}.{alias.name}" for alias in node.names if node.module == "dialogue"
            )
    return {name for name in imported if name.split(".")[0] in PROJECT and name != "dialogue"}


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
        ("dialogue.nlu.router", "def serve():\n    from api.app import create_app\n"),
        ("dialogue.contracts", "from dialogue.settings import Settings\n"),
        ("activities.understand", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import worker\n"),
        ("api.routes.turns", "from dialogue import cli\n"),
    ],
)
def test_the_layer_check_catches_a_planted_upward_import(module: str, planted: str) -> None:
    assert upward_imports(module, planted)


def test_importing_the_api_loads_no_worker_code() -> None:
    probe = (
        "import sys, api.app; print(' '.join(sorted(m for m in sys.modules if m.startswith(("
        "'activities', 'workflows.conversation', 'worker', 'dialogue.nlu.parser', 'dialogue.nlu.classifier', "
        "'dialogue.knowledge.search', 'dialogue.agent', 'dialogue.generation', 'bm25s', 'sklearn', 'torch', "
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
