"""JSON Lines files of pydantic records (training data, test sets, QA sets)."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import orjson
from pydantic import BaseModel, ValidationError

Record = TypeVar("Record", bound=BaseModel)


class DataError(ValueError):
    """A data file that cannot be read; says which line."""


def read_jsonl(path: Path, record: type[Record]) -> list[Record]:
    """Every non-blank line of `path` as a `record`; at least one."""
    records = [found for _, found in numbered_records(path, record)]
    if not records:
        raise DataError(f"{path}: no records")
    return records


def numbered_records(path: Path, record: type[Record]) -> list[tuple[int, Record]]:
    """Every non-blank line of `path` as a `record`, with its line number (for a file a person edits, whose
    own lines a later error names); none for an empty file."""
    records = []
    with path.open("rb") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                records.append((number, record.model_validate(orjson.loads(line))))
            except (orjson.JSONDecodeError, ValidationError) as err:
                raise DataError(f"{path}:{number}: {err}") from err
    return records
