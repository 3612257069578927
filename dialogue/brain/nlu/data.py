"""NLU training data: JSON Lines, one example a line.

    {"text": "where is NW-123456?", "intent": "order_status",
     "entities": [{"start": 9, "end": 18, "entity": "order_id", "value": "NW-123456"}]}

The intent `out_of_scope` marks examples that belong to no intent.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import orjson
from pydantic import BaseModel, model_validator

from dialogue.model.contracts import OUT_OF_SCOPE
from dialogue.platform.jsonl import DataError, read_jsonl

__all__ = ["OUT_OF_SCOPE", "DataError", "EntitySpan", "Example", "data_hash", "read_examples"]


class EntitySpan(BaseModel):
    start: int
    end: int
    entity: str
    value: str


class Example(BaseModel):
    text: str
    intent: str
    entities: list[EntitySpan] = []

    @model_validator(mode="after")
    def _spans_inside_text(self) -> Example:
        for span in self.entities:
            if not 0 <= span.start < span.end <= len(self.text):
                raise ValueError(f"entity span {span.start}:{span.end} is outside the text")
        return self


def read_examples(path: Path) -> list[Example]:
    return read_jsonl(path, Example)


def data_hash(examples: Iterable[Example]) -> str:
    """A digest of the examples, recorded in the model so a model can be traced to its data."""
    digest = hashlib.sha256()
    for example in examples:
        digest.update(orjson.dumps(example.model_dump(), option=orjson.OPT_SORT_KEYS))
    return digest.hexdigest()
