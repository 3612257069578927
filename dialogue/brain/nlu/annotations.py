"""Annotation files: the user turns `dialogue nlu review` exported for a person to label, one JSON line each,
and the labelled lines read back as training examples.

    {"conversation_id": "default/c-17", "turn_id": "t-3", "turn_index": 2, "text": "my parcel is soaked",
     "intent": "shipping_info", "confidence": 0.31, "reasons": ["unsure", "rated_down"],
     "reply": "Standard shipping takes ...", "label": ""}

The annotator fills `label` with an intent of the bot, `out_of_scope`, or `skip`; an empty label is a line
not looked at yet. Both are left out of training.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Literal

import orjson
from pydantic import BaseModel

from dialogue.brain.nlu.data import DataError, Example
from dialogue.platform.jsonl import numbered_records

SKIP = "skip"
"""The label of a line that teaches nothing (a typo, a turn only a person could place)."""

Reason = Literal["unsure", "out_of_scope", "rated_down", "handed_off"]
REASONS: tuple[Reason, ...] = ("unsure", "out_of_scope", "rated_down", "handed_off")


class Occurrence(BaseModel):
    """Another turn that said the same (after redaction): a line stands for all of them."""

    conversation_id: str
    turn_id: str


class Annotation(BaseModel):
    """One user turn worth a person's look, redacted with the bot's privacy policy."""

    conversation_id: str
    """The conversation's key, `tenant/id`."""
    turn_id: str
    turn_index: int
    at: datetime | None = None
    text: str
    """What the user said, redacted."""
    intent: str | None
    """What the NLU made of it."""
    confidence: float | None
    reasons: list[Reason]
    reply: str
    """What the bot answered, redacted."""
    rating: str | None = None
    nlu_model: str | None = None
    """The model that placed it (`trained:<version>`, `keywords`), from the answer's lineage."""
    also: list[Occurrence] = []
    label: str = ""
    """For the annotator: an intent of the bot, `out_of_scope`, or `skip`."""

    @property
    def labelled(self) -> bool:
        return bool(self.label.strip()) and self.label.strip() != SKIP

    @property
    def conversations(self) -> list[str]:
        return [self.conversation_id, *(o.conversation_id for o in self.also)]


def write_annotations(annotations: list[Annotation], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(orjson.dumps(a.model_dump(mode="json")) + b"\n" for a in annotations))


def read_annotations(path: Path) -> list[tuple[int, Annotation]]:
    """Every line of an annotation file with its line number; an empty file has none."""
    if not path.is_file():
        raise DataError(f"{path}: no such annotation file")
    return numbered_records(path, Annotation)


def labelled_examples(path: Path, intents: set[str]) -> list[tuple[int, Annotation, Example]]:
    """The labelled lines of an annotation file as examples, with their line numbers. A label that is none
    of `intents` is a mistake to fix in the file, not an intent to invent: it raises, naming the line."""
    examples = []
    for number, annotation in read_annotations(path):
        if not annotation.labelled:
            continue
        label = annotation.label.strip()
        if label not in intents:
            raise DataError(
                f"{path}:{number}: label {label!r} is no intent of the bot; "
                f"write one of {', '.join(sorted(intents))}, or {SKIP}"
            )
        examples.append((number, annotation, Example(text=annotation.text, intent=label)))
    return examples
