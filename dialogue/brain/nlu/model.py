"""A trained NLU model as a versioned artifact: `model.joblib` and `metadata.json` in one folder (and, for a
bot's model, its card: `model_card.py`).

The model is the intent classifier and, for a bot with a knowledge base, its router (`routing.py`),
calibrated against that knowledge base. The metadata records the content hash of the model file (its
version, carried into lineage), a digest of the training data, the intents, the out-of-scope threshold
and how it was chosen, and whether a router was trained. Loading checks the hash. A model folder is
code-equivalent (joblib unpickles): load only folders you trust.
"""

from __future__ import annotations

import hashlib
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import joblib
import sklearn
from pydantic import BaseModel

from dialogue.brain.nlu.classifier import IntentClassifier, out_of_fold_probabilities, tune_threshold
from dialogue.brain.nlu.data import OUT_OF_SCOPE, Example, data_hash, read_examples
from dialogue.brain.nlu.embeddings import EMBEDDING_MODEL, embed_many, embeddings_available
from dialogue.brain.nlu.routing import Router, Search, train_router
from dialogue.platform.bot import BotDefinition

FORMAT_VERSION = 3
"""2: the router beside the classifier. 3: the same, pickled from `dialogue.brain.nlu` (the classes' module
paths are in the file: a model saved by 2 would not load, so it is trained again)."""
MODEL_FILE = "model.joblib"
METADATA_FILE = "metadata.json"


class ModelMetadata(BaseModel):
    format_version: int = FORMAT_VERSION
    content_hash: str
    """sha256 of `model.joblib`: the model's version."""
    created_at: datetime
    data_hash: str
    validation_hash: str | None
    n_examples: int
    intents: list[str]
    out_of_scope_class: bool
    threshold: float
    threshold_source: Literal["validation", "cross_validation", "none"]
    embeddings: str | None
    training_seconds: float
    sklearn_version: str
    router: bool = False
    """Whether a router was trained (against the knowledge base the bot had then)."""

    @property
    def version(self) -> str:
        return self.content_hash[:12]


@dataclass
class TrainedModel:
    classifier: IntentClassifier
    learned_entities: dict[str, list[str]]
    """Entity values seen in the training annotations, used as lookup tables."""
    metadata: ModelMetadata | None = None
    router: Router | None = None


class ModelError(RuntimeError):
    pass


def train(
    examples: list[Example],
    validation: list[Example] | None = None,
    *,
    use_embeddings: bool | None = None,
    actions: dict[str, str] | None = None,
    search: Search | None = None,
) -> TrainedModel:
    """Fit the classifier, tune its out-of-scope threshold on held-out examples, then refit on everything.

    With `actions` (each intent's action in the bot) and `search` (the knowledge base's passages for a
    text), also fit the router on held-out predictions of the same examples."""
    started = time.perf_counter()
    if len({e.intent for e in examples}) < 2:
        raise ModelError("training needs at least two intents")
    use_embeddings = embeddings_available() if use_embeddings is None else use_embeddings
    texts = [e.text for e in examples]
    labels = [e.intent for e in examples]
    held_texts = [e.text for e in validation or []]
    held_labels = [e.intent for e in validation or []]
    # Kept vectors, by the float model (`embed_many`); the model reads a turn's text as `embed` makes it.
    vectors = embed_many(texts + held_texts) if use_embeddings else None
    train_vectors = vectors[: len(texts)] if vectors is not None else None

    classifier = IntentClassifier(use_embeddings=use_embeddings).fit(texts, labels, train_vectors)
    source: Literal["validation", "cross_validation", "none"] = "none"
    out_of_fold = None
    if validation:
        held_vectors = vectors[len(texts) :] if vectors is not None else None
        probabilities = classifier.probabilities(held_texts, held_vectors)
        threshold, source = tune_threshold(classifier, probabilities, held_labels), "validation"
        # The validation examples have done their job; they are data too.
        texts, labels = texts + held_texts, labels + held_labels
        classifier = IntentClassifier(use_embeddings=use_embeddings).fit(texts, labels, vectors)
    else:
        out_of_fold = out_of_fold_probabilities(classifier, texts, labels, train_vectors)
        threshold = 0.0
        if out_of_fold is not None:
            threshold, source = tune_threshold(classifier, out_of_fold, labels), "cross_validation"
    classifier.threshold = threshold
    router = None
    if actions is not None and search is not None:
        router = train_router(classifier, texts, labels, vectors, actions, search, out_of_fold=out_of_fold)

    learned: dict[str, set[str]] = defaultdict(set)
    for example in [*examples, *(validation or [])]:
        for span in example.entities:
            learned[span.entity].add(example.text[span.start : span.end])
    model = TrainedModel(
        classifier=classifier, learned_entities={k: sorted(v) for k, v in learned.items()}, router=router
    )
    model.metadata = ModelMetadata(
        content_hash="",
        created_at=datetime.now(UTC),
        data_hash=data_hash(examples),
        validation_hash=data_hash(validation) if validation else None,
        n_examples=len(texts),
        intents=classifier.labels,
        out_of_scope_class=OUT_OF_SCOPE in classifier.labels,
        threshold=threshold,
        threshold_source=source,
        embeddings=EMBEDDING_MODEL if use_embeddings else None,
        training_seconds=round(time.perf_counter() - started, 2),
        sklearn_version=sklearn.__version__,
        router=router is not None,
    )
    return model


def save(model: TrainedModel, folder: Path) -> ModelMetadata:
    assert model.metadata is not None
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / MODEL_FILE
    joblib.dump(
        {"classifier": model.classifier, "learned_entities": model.learned_entities, "router": model.router},
        path,
    )
    model.metadata.content_hash = _sha256(path)
    (folder / METADATA_FILE).write_text(model.metadata.model_dump_json(indent=2) + "\n")
    return model.metadata


def load(folder: Path) -> TrainedModel:
    meta_path, model_path = folder / METADATA_FILE, folder / MODEL_FILE
    if not meta_path.exists() or not model_path.exists():
        raise ModelError(f"{folder} holds no NLU model (train one with `dialogue nlu train`)")
    metadata = ModelMetadata.model_validate_json(meta_path.read_text())
    if metadata.format_version != FORMAT_VERSION:
        raise ModelError(
            f"{folder}: model format {metadata.format_version}, this code reads {FORMAT_VERSION}"
        )
    if _sha256(model_path) != metadata.content_hash:
        raise ModelError(f"{folder}: {MODEL_FILE} does not match the hash in {METADATA_FILE}")
    if metadata.embeddings and not embeddings_available():
        raise ModelError(f"{folder} was trained with embeddings; install the `embeddings` extra")
    content = joblib.load(model_path)
    return TrainedModel(content["classifier"], content["learned_entities"], metadata, content["router"])


def has_model(folder: Path) -> bool:
    return (folder / METADATA_FILE).exists() and (folder / MODEL_FILE).exists()


def ensure_bot_model(
    bot: BotDefinition, folder: Path, *, search: Search | None = None
) -> tuple[ModelMetadata, bool] | None:
    """The bot's model, trained if missing or older than its training data; None if the bot has none.
    The data is its `nlu.train` examples and the labelled lines of its `nlu.reviewed` annotation files.
    `search` (the knowledge base's passages, when it has documents) calibrates the router: a model
    trained without one is trained again once there is a knowledge base. A model trained here gets its
    card (`model_card.json`: its data, where each example came from, its held-out evaluation); a model
    trained before cards existed gets one the first time it is found up to date.

    Returns the model's metadata and whether it was trained just now.
    """
    # Imported here: the card measures the model with the parser, which imports this module.
    from dialogue.brain.nlu.model_card import build_card, has_card, write_card
    from dialogue.brain.nlu.training_data import bot_training_data

    if bot.nlu is None:
        return None
    data = bot_training_data(bot)
    examples = data.examples
    validation = read_examples(bot.resolve(bot.nlu.validation)) if bot.nlu.validation else None
    if has_model(folder):
        current = ModelMetadata.model_validate_json((folder / METADATA_FILE).read_text())
        same = (
            current.format_version == FORMAT_VERSION
            and current.data_hash == data_hash(examples)
            and current.validation_hash == (data_hash(validation) if validation else None)
            # A model trained on another embedder's vectors (the int8 copy's, once opt-in) is trained again.
            and current.embeddings == (EMBEDDING_MODEL if embeddings_available() else None)
            and (current.router or search is None)
        )
        if same:
            if not has_card(folder):
                write_card(build_card(bot, load(folder), data), folder)
            return current, False
    actions: dict[str, str] = {intent.name: intent.action for intent in bot.intents}
    model = train(examples, validation, actions=actions, search=search)
    metadata = save(model, folder)
    write_card(build_card(bot, model, data), folder)
    return metadata, True


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
