"""Intent evaluation: the numbers `dialogue nlu evaluate` prints."""

from __future__ import annotations

import time

from pydantic import BaseModel
from sklearn.metrics import f1_score

from dialogue.brain.nlu.data import OUT_OF_SCOPE, Example
from dialogue.brain.nlu.parser import NluParser


class NluReport(BaseModel):
    accuracy: float
    """Over all examples, `out_of_scope` counted as an intent."""
    in_scope_accuracy: float
    """Over the examples whose label is not `out_of_scope`."""
    oos_recall: float
    """Of the `out_of_scope` examples, the share predicted `out_of_scope`."""
    oos_precision: float
    """Of the `out_of_scope` predictions, the share that were right."""
    macro_f1: float
    latency_ms_mean: float
    """Mean time of one `parse` (intent, entities, sentiment), one utterance at a time."""
    n_examples: int


def evaluate(parser: NluParser, examples: list[Example]) -> NluReport:
    predicted: list[str] = []
    started = time.perf_counter()
    for example in examples:
        predicted.append(parser.parse(example.text).intent.name)
    elapsed = time.perf_counter() - started
    truth = [e.intent for e in examples]
    pairs = list(zip(truth, predicted, strict=True))
    in_scope = [(t, p) for t, p in pairs if t != OUT_OF_SCOPE]
    oos_truth = [p for t, p in pairs if t == OUT_OF_SCOPE]
    oos_predicted = [t for t, p in pairs if p == OUT_OF_SCOPE]
    return NluReport(
        accuracy=_share(t == p for t, p in pairs),
        in_scope_accuracy=_share(t == p for t, p in in_scope),
        oos_recall=_share(p == OUT_OF_SCOPE for p in oos_truth),
        oos_precision=_share(t == OUT_OF_SCOPE for t in oos_predicted),
        macro_f1=round(float(f1_score(truth, predicted, labels=sorted(set(truth)), average="macro")), 4),
        latency_ms_mean=round(elapsed * 1000 / len(examples), 3),
        n_examples=len(examples),
    )


def _share(hits: object) -> float:
    values = list(hits)  # type: ignore[call-overload]
    return round(sum(values) / len(values), 4) if values else 0.0
