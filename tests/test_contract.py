"""The v1 contract: the checked-in `openapi.json` is what the code serves, and v1 only grows.

Within v1 a response may gain fields, never lose or rename one, and an error code keeps its status
(docs/api.md, "Versioning"). `tests/v1_contract.json` holds the fields of every v1 response model and the
error codes as v1 first promised them; adding a field needs no change there.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from api.errors import ERRORS
from api.openapi import default_document, render

pytestmark = pytest.mark.unit  # pure code: `make check` runs it

ROOT = Path(__file__).resolve().parent.parent
CHECKED_IN = ROOT / "openapi.json"
BASELINE = Path(__file__).with_name("v1_contract.json")


def response_fields(document: dict[str, Any]) -> dict[str, list[str]]:
    """Every schema a v1 success response carries (and the schemas inside it): its field names."""
    schemas = document["components"]["schemas"]
    seen: dict[str, list[str]] = {}

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str):
                name = ref.rsplit("/", 1)[-1]
                if name not in seen:
                    seen[name] = sorted(schemas[name].get("properties", {}))
                    visit(schemas[name])
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    for path, item in document["paths"].items():
        if path.startswith("/v1/"):
            for operation in item.values():
                for status, response in operation["responses"].items():
                    if status.startswith("2"):
                        visit(response)
    return dict(sorted(seen.items()))


def contract_of(document: dict[str, Any]) -> dict[str, Any]:
    return {
        "response_fields": response_fields(document),
        "error_codes": {code: entry.status for code, entry in sorted(ERRORS.items())},
    }


def test_the_checked_in_openapi_is_what_the_code_serves() -> None:
    assert CHECKED_IN.read_text() == render(default_document()), (
        "openapi.json differs from the code: run `make openapi` and review the change"
    )


def test_no_v1_response_field_is_removed_or_renamed() -> None:
    promised = json.loads(BASELINE.read_text())["response_fields"]
    served = response_fields(default_document())
    missing = {
        schema: sorted(set(fields) - set(served.get(schema, [])))
        for schema, fields in promised.items()
        if set(fields) - set(served.get(schema, []))
    }
    assert not missing, f"v1 responses lost fields (a breaking change: it needs /v2): {missing}"


def test_no_error_code_is_removed_or_changes_status() -> None:
    promised = json.loads(BASELINE.read_text())["error_codes"]
    changed = {
        code: (status, ERRORS[code].status if code in ERRORS else None)
        for code, status in promised.items()
        if code not in ERRORS or ERRORS[code].status != status
    }
    assert not changed, f"error codes removed or moved to another status: {changed}"


def test_the_check_catches_a_removed_field() -> None:
    document = default_document()
    del document["components"]["schemas"]["TurnReply"]["properties"]["turn_index"]
    assert "turn_index" not in response_fields(document)["TurnReply"]
    assert "turn_index" in json.loads(BASELINE.read_text())["response_fields"]["TurnReply"]


if __name__ == "__main__":  # writes the baseline: only when v1 is first promised, or for a new version
    BASELINE.write_text(json.dumps(contract_of(default_document()), indent=2) + "\n")
