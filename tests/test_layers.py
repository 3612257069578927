"""Dependencies point one way: api -> workflows <- activities, and everything -> the domain model
(`dialogue.contracts`), which imports nothing of the project. The API runs without the worker's code."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from temporalio import workflow

from dialogue import contracts
from workflows.conversation import ConversationWorkflow

ROOT = Path(__file__).resolve().parent.parent
PROJECT = ("api", "workflows", "activities", "dialogue", "worker")

# What each layer may import of the project at module level (a function may import more, lazily:
# the CLI starts a worker, the API builds the NLU parser when asked to parse).
MODEL = ("dialogue.contracts", "dialogue.api_models")
ALLOWED = {
    "dialogue.contracts": set(),
    "dialogue.api_models": {"dialogue.contracts"},
    "dialogue": {"dialogue"},
    "activities": {"activities", "dialogue"},
    "workflows": {"workflows", "activities", "dialogue"},
    "api": {"api", "dialogue"},
    "worker": {"worker", "workflows", "activities", "dialogue"},
}


def _layer(module: str) -> str:
    return module if module in MODEL else module.split(".")[0]


def _module_level_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    imported: set[str] = set()
    for node in tree.body:  # module level only; `if TYPE_CHECKING:` blocks do not run
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module)
        elif isinstance(node, ast.With):  # workflow.unsafe.imports_passed_through()
            for inner in ast.walk(node):
                if isinstance(inner, ast.ImportFrom) and inner.module:
                    imported.add(inner.module)
    return {name for name in imported if name.split(".")[0] in PROJECT}


def _sources() -> list[tuple[str, Path]]:
    found = [("worker", ROOT / "worker.py")]
    for package in ("api", "workflows", "activities", "dialogue"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found.append((".".join(p for p in parts if p != "__init__"), path))
    return found


@pytest.mark.parametrize(("module", "path"), _sources(), ids=lambda v: v if isinstance(v, str) else "")
def test_a_module_imports_only_its_own_layer_and_those_below(module: str, path: Path) -> None:
    layer = _layer(module)
    allowed = ALLOWED[layer] | (set(MODEL) if layer not in MODEL else set())
    upward = {name for name in _module_level_imports(path) if _layer(name) not in allowed and name != module}
    assert not upward, f"{module} imports {sorted(upward)}, above its layer"


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
