"""A trained model's card: `model_card.json` beside `model.joblib` and `metadata.json`.

It says what the model learned from (the digest of its data, the examples per intent and per file, and for
the examples a person labelled from conversations, which conversations and turns) and how good it is: on
held-out examples when it is trained, and, filled in by whoever publishes a bot version with it, the bot's
conversation tests and a replay of recorded conversations against the stable version. `failed_gates` reads
it against the bot's `nlu.gates`: a version whose model fails one is not published.

An answer's lineage names its model (`trained:<version>`); the card of that version names its data.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from dialogue.brain.nlu.data import OUT_OF_SCOPE, Example, read_examples
from dialogue.brain.nlu.evaluate import evaluate
from dialogue.brain.nlu.model import TrainedModel, train
from dialogue.brain.nlu.parser import ModelParser
from dialogue.brain.nlu.training_data import Origin, TrainingData
from dialogue.platform.bot import BotDefinition, NluGates

CARD_FILE = "model_card.json"
SPLIT_EVERY = 5
"""Without a test file, one training example in this many is held out (chosen by a digest of its text, so
the same data always splits the same way) to measure a model trained on the others."""


class HeldOutEvaluation(BaseModel):
    data: str
    """The test file as the bot names it, or `split: 1 in 5 of the training examples`."""
    n_examples: int
    accuracy: float
    """`out_of_scope` counted as an intent."""
    in_scope_accuracy: float
    macro_f1: float
    out_of_scope_recall: float | None
    """None when the held-out examples have no `out_of_scope` one."""


class ConversationTests(BaseModel):
    """The bot's conversation tests (`dialogue test`) run against the version with this model."""

    passed: int
    failed: int
    skipped: int = 0


class ReplayEvaluation(BaseModel):
    """Recorded conversations re-sent to the version with this model (`dialogue eval`), against the stable
    version's recorded answers."""

    stable_version: str | None
    """The version compared against; None when there was none (the first version): nothing to compare."""
    conversations: int = 0
    turns: int = 0
    changed_turns: int = 0
    changed_intents: int = 0
    changed_actions: int = 0
    rated_down: int = 0
    report: str | None = None
    """Where the evaluation's report was written."""

    @property
    def changed_intents_share(self) -> float:
        return self.changed_intents / self.turns if self.turns else 0.0


class ReviewedExample(BaseModel):
    intent: str
    origin: Origin


class ModelCard(BaseModel):
    bot: str
    nlu_model: str
    """As answers' lineage names the model: `trained:<version>`."""
    content_hash: str
    created_at: datetime
    data_hash: str
    """The digest of the examples it was trained on (`nlu.train`, then the labelled `nlu.reviewed` lines)."""
    validation_hash: str | None
    n_examples: int
    examples_per_intent: dict[str, int]
    examples_per_source: dict[str, int]
    """By file, as the bot names it: the training file and each annotation file."""
    examples_per_intent_and_source: dict[str, dict[str, int]]
    reviewed_conversations: list[str]
    """The conversations (`tenant/id`) the labelled examples came from."""
    reviewed_examples: list[ReviewedExample]
    held_out: HeldOutEvaluation | None
    """None when there was nothing to hold out (a split leaving fewer than two intents to train on)."""
    conversation_tests: ConversationTests | None = None
    replay: ReplayEvaluation | None = None


def build_card(bot: BotDefinition, model: TrainedModel, data: TrainingData) -> ModelCard:
    """The card of a model just trained (and saved: its version is its file's hash) on `data`."""
    assert model.metadata is not None and model.metadata.content_hash, "save the model first"
    metadata = model.metadata
    per_intent: dict[str, Counter[str]] = defaultdict(Counter)
    for example, origin in zip(data.examples, data.origins, strict=True):
        per_intent[example.intent][origin.file] += 1
    reviewed = [
        ReviewedExample(intent=example.intent, origin=origin)
        for example, origin in zip(data.examples, data.origins, strict=True)
        if origin.conversation_id is not None
    ]
    conversations = {c for r in reviewed for c in [r.origin.conversation_id, *r.origin.also] if c is not None}
    return ModelCard(
        bot=bot.name,
        nlu_model=f"trained:{metadata.version}",
        content_hash=metadata.content_hash,
        created_at=datetime.now(UTC),
        data_hash=metadata.data_hash,
        validation_hash=metadata.validation_hash,
        n_examples=metadata.n_examples,
        examples_per_intent={intent: sum(c.values()) for intent, c in sorted(per_intent.items())},
        examples_per_source=dict(sorted(Counter(o.file for o in data.origins).items())),
        examples_per_intent_and_source={
            intent: dict(sorted(c.items())) for intent, c in sorted(per_intent.items())
        },
        reviewed_conversations=sorted(conversations),
        reviewed_examples=reviewed,
        held_out=held_out_evaluation(bot, model, data.examples),
    )


def held_out_evaluation(
    bot: BotDefinition, model: TrainedModel, examples: list[Example]
) -> HeldOutEvaluation | None:
    """The model on the bot's test file; without one, a model trained the same way on four fifths of the
    examples, on the fifth it did not see (the model itself saw every example: it cannot be measured on them)."""
    assert bot.nlu is not None and model.metadata is not None
    if bot.nlu.test:
        return _measured(bot, model, read_examples(bot.resolve(bot.nlu.test)), bot.nlu.test)
    held = [e for e in examples if _held_out(e.text)]
    rest = [e for e in examples if not _held_out(e.text)]
    if not held or len({e.intent for e in rest}) < 2:
        return None
    trial = train(rest, use_embeddings=model.metadata.embeddings is not None)
    return _measured(bot, trial, held, f"split: 1 in {SPLIT_EVERY} of the training examples")


def _measured(
    bot: BotDefinition, model: TrainedModel, examples: list[Example], data: str
) -> HeldOutEvaluation:
    report = evaluate(ModelParser(bot, model), examples)
    return HeldOutEvaluation(
        data=data,
        n_examples=report.n_examples,
        accuracy=report.accuracy,
        in_scope_accuracy=report.in_scope_accuracy,
        macro_f1=report.macro_f1,
        out_of_scope_recall=report.oos_recall if any(e.intent == OUT_OF_SCOPE for e in examples) else None,
    )


def _held_out(text: str) -> bool:
    return hashlib.sha256(text.encode()).digest()[0] % SPLIT_EVERY == 0


def write_card(card: ModelCard, folder: Path) -> Path:
    path = folder / CARD_FILE
    path.write_text(card.model_dump_json(indent=2) + "\n")
    return path


def read_card(folder: Path) -> ModelCard:
    path = folder / CARD_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no {CARD_FILE} (a model trained for a bot has one)")
    return ModelCard.model_validate_json(path.read_text())


def has_card(folder: Path) -> bool:
    return (folder / CARD_FILE).is_file()


Gate = Literal["accuracy", "macro_f1", "out_of_scope_recall", "conversation_tests", "changed_intents"]


def failed_gates(card: ModelCard, gates: NluGates) -> list[str]:
    """Each gate the card does not pass, said as a sentence; none when a version with it may be published.

    A measurement the card lacks fails its gate (a publisher that skipped the conversation tests publishes
    nothing), except the out-of-scope recall of held-out examples that have no `out_of_scope` one, and a
    replay with no stable version to compare against (the first version)."""
    failed = []
    held = card.held_out
    if held is None:
        failed.append("held-out evaluation: none (no test file, and too few examples to split)")
    else:
        if held.accuracy < gates.min_accuracy:
            failed.append(f"held-out accuracy {held.accuracy:.3f} < {gates.min_accuracy} ({held.data})")
        if held.macro_f1 < gates.min_macro_f1:
            failed.append(f"held-out macro-F1 {held.macro_f1:.3f} < {gates.min_macro_f1} ({held.data})")
        recall = held.out_of_scope_recall
        if recall is not None and recall < gates.min_out_of_scope_recall:
            failed.append(f"held-out out-of-scope recall {recall:.3f} < {gates.min_out_of_scope_recall}")
    tests = card.conversation_tests
    if tests is None:
        failed.append("conversation tests: not run")
    elif tests.failed > gates.max_failed_tests:
        failed.append(f"conversation tests: {tests.failed} failed (at most {gates.max_failed_tests})")
    replay = card.replay
    if replay is None:
        failed.append("replay against the stable version: not run")
    elif replay.stable_version is not None and replay.changed_intents_share > gates.max_changed_intents:
        failed.append(
            f"replay against {replay.stable_version}: intents changed in {replay.changed_intents} of "
            f"{replay.turns} turns ({replay.changed_intents_share:.1%} > {gates.max_changed_intents:.0%})"
        )
    return failed
