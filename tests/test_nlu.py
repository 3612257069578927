"""NLU: keyword rules, entities, sentiment, and the trained classifier as an artifact and a CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dialogue.brain.nlu.classifier import IntentClassifier, tune_threshold
from dialogue.brain.nlu.data import DataError, Example, read_examples
from dialogue.brain.nlu.entities import EntityExtractor
from dialogue.brain.nlu.evaluate import evaluate
from dialogue.brain.nlu.model import ModelError, load, save, train
from dialogue.brain.nlu.parser import KeywordParser, ModelParser
from dialogue.brain.nlu.sentiment import sentiment
from dialogue.model.contracts import OUT_OF_SCOPE
from dialogue.platform.bot import BotDefinition


@pytest.mark.parametrize(
    ("text", "intent"),
    [
        ("hello", "greet"),
        ("Hi there!", "greet"),
        ("I want a refund for my headphones", "refund_status"),
        ("Where is my order?", "order_status"),
        ("what is the capital of peru", OUT_OF_SCOPE),
        ("this is it", OUT_OF_SCOPE),  # "this" contains "hi": whole words only
    ],
)
def test_keyword_parser_finds_the_intent(demo_bot: BotDefinition, text: str, intent: str) -> None:
    assert KeywordParser(demo_bot).parse(text).intent.name == intent


def test_keyword_confidence_grows_with_evidence(demo_bot: BotDefinition) -> None:
    parser = KeywordParser(demo_bot)
    one = parser.parse("track").intent.confidence
    two = parser.parse("order status and tracking").intent.confidence
    assert 0 < one < two < 1


def test_entities_from_declarations_learned_values_and_builtins() -> None:
    extractor = EntityExtractor(
        patterns={"order_id": r"\bNW-\d{6}\b"},
        lookups={"product": ["headphones", "wireless headphones"]},
        learned={"colour": ["midnight blue"]},
    )
    text = "NW-123456: 2 wireless headphones in Midnight Blue, mail ana@example.org or call +49 170 1234567 by 3 March 2027"
    found = [(e.entity, e.value) for e in extractor.extract(text)]
    assert found == [
        ("order_id", "NW-123456"),
        ("number", "2"),
        ("product", "wireless headphones"),
        ("colour", "midnight blue"),
        ("email", "ana@example.org"),
        ("phone", "+49 170 1234567"),
        ("date", "3 March 2027"),
    ]
    for entity in extractor.extract(text):
        assert text[entity.start : entity.end].lower() == entity.value.lower()


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("Thanks, that was really helpful!", "positive"),
        ("This is terrible, I am very angry", "negative"),
        ("I ordered a tablet last week.", "neutral"),
    ],
)
def test_sentiment(text: str, label: str) -> None:
    assert sentiment(text).label == label


def test_read_examples_names_the_bad_line(tmp_path: Path) -> None:
    data = tmp_path / "bad.jsonl"
    data.write_text('{"text": "hi", "intent": "greet"}\n{"text": "oops"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2"):
        read_examples(data)
    data.write_text(
        '{"text": "hi", "intent": "greet", "entities": [{"start": 0, "end": 9, "entity": "x", "value": "hi"}]}\n'
    )
    with pytest.raises(DataError, match="outside the text"):
        read_examples(data)


def test_threshold_is_tuned_to_catch_out_of_scope_within_the_in_scope_budget() -> None:
    classifier = IntentClassifier(use_embeddings=False)
    classifier.labels = ["a", "b"]
    # Confident in-scope predictions, unsure ones on out-of-scope text.
    probabilities = [[0.95, 0.05], [0.1, 0.9], [0.8, 0.2], [0.55, 0.45], [0.5, 0.5]]
    labels = ["a", "b", "a", OUT_OF_SCOPE, OUT_OF_SCOPE]
    import numpy as np

    threshold = tune_threshold(classifier, np.array(probabilities), labels)
    assert 0.55 < threshold <= 0.8


def test_the_trained_demo_model_generalises_to_its_held_out_test_set(
    demo_bot: BotDefinition, demo_model_dir: Path
) -> None:
    assert demo_bot.nlu and demo_bot.nlu.test
    parser = ModelParser(demo_bot, load(demo_model_dir))
    report = evaluate(parser, read_examples(demo_bot.resolve(demo_bot.nlu.test)))
    assert report.n_examples == 280
    assert report.in_scope_accuracy >= 0.9
    assert report.oos_recall >= 0.6
    result = parser.parse("where is my parcel NW-123456? it's been ages")
    assert result.intent.name == "order_status"
    assert result.ranking[0].name == "order_status"
    assert result.model and result.model.startswith("trained:")
    assert ("order_id", "NW-123456") in [(e.entity, e.value) for e in result.entities]


def test_a_model_folder_is_versioned_and_checked_on_load(tmp_path: Path) -> None:
    examples = [
        Example(text=t, intent=i)
        for t, i in [("hi", "greet"), ("hello there", "greet"), ("bye", "bye"), ("see you", "bye")]
    ]
    folder = tmp_path / "model"
    meta = save(train(examples, use_embeddings=False), folder)
    assert len(meta.content_hash) == 64 and meta.version == meta.content_hash[:12]
    assert meta.intents == ["bye", "greet"]
    assert load(folder).metadata == meta
    with (folder / "model.joblib").open("ab") as model_file:
        model_file.write(b"tampered")
    with pytest.raises(ModelError, match="does not match"):
        load(folder)
    with pytest.raises(ModelError, match="holds no NLU model"):
        load(tmp_path / "nothing")


def test_nlu_cli_trains_evaluates_and_parses(tmp_path: Path, demo_bot: BotDefinition) -> None:
    assert demo_bot.nlu and demo_bot.nlu.test
    train_file, test_file = demo_bot.resolve(demo_bot.nlu.train), demo_bot.resolve(demo_bot.nlu.test)
    model = tmp_path / "model"

    def dialogue(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "dialogue", "nlu", *args], capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "trained 21 intents" in dialogue(
        "train", "--data", str(train_file), "--out", str(model), "--no-embeddings"
    )
    report = json.loads(dialogue("evaluate", "--model", str(model), "--data", str(test_file), "--json"))
    assert set(report) == {
        "accuracy",
        "in_scope_accuracy",
        "oos_recall",
        "oos_precision",
        "macro_f1",
        "latency_ms_mean",
        "n_examples",
    }
    assert all(0 <= report[k] <= 1 for k in report if k not in ("latency_ms_mean", "n_examples"))
    assert report["in_scope_accuracy"] > 0.8
    parsed = json.loads(dialogue("parse", "--model", str(model), "I would like to return my smartwatch"))
    assert parsed["intent"]["name"] == "returns"


def test_the_backend_is_chosen_in_settings(
    tmp_path: Path, demo_bot: BotDefinition, demo_model_dir: Path
) -> None:
    from dialogue.brain.nlu.parser import build_parser
    from dialogue.platform.settings import Settings

    missing = tmp_path / "none"
    assert isinstance(
        build_parser(Settings(nlu_model_dir=missing), demo_bot), KeywordParser
    )  # auto, no model
    assert isinstance(build_parser(Settings(nlu_model_dir=demo_model_dir), demo_bot), ModelParser)
    keywords = Settings(nlu_model_dir=demo_model_dir, nlu_backend="keywords")
    assert isinstance(build_parser(keywords, demo_bot), KeywordParser)
    with pytest.raises(ModelError):
        build_parser(Settings(nlu_model_dir=missing, nlu_backend="trained"), demo_bot)


def test_embeddings_are_unit_length_and_padding_does_not_change_them() -> None:
    from dialogue.brain.nlu.embeddings import embed, embed_many, embeddings_available

    if not embeddings_available():
        pytest.skip("the embeddings extra is not installed")
    import numpy as np

    short, long = "refund", "I sent the headphones back two weeks ago and still have not seen my money"
    for encode in (embed, embed_many):  # the run-time model (int8 by default) and the float one
        together = encode([short, long])
        alone = np.vstack([encode([short]), encode([long])])
        assert np.allclose(np.linalg.norm(together, axis=1), 1, atol=1e-5)
        assert np.allclose(together, alone, atol=1e-5)  # the short one padded in a batch, or run alone
    similar = float(embed(["where is my parcel?"])[0] @ embed(["track my package"])[0])
    unrelated = float(embed(["where is my parcel?"])[0] @ embed(["recipe for lasagne"])[0])
    assert similar > unrelated + 0.2


def test_the_int8_copy_of_the_model_is_made_once_and_keeps_the_meaning(tmp_path: Path) -> None:
    from dialogue.brain.nlu import embeddings

    if not embeddings.embeddings_available():
        pytest.skip("the embeddings extra is not installed")
    import shutil

    import numpy as np

    embeddings._encoder()  # the float export
    exported = tmp_path / "model.onnx"
    shutil.copy(embeddings._export_path(), exported)
    quantized = embeddings.quantized_copy(exported, "int8")
    assert quantized.exists() and quantized.stat().st_size < exported.stat().st_size * 0.7  # int8 weights
    made = quantized.stat().st_mtime_ns
    assert embeddings.quantized_copy(exported, "int8") == quantized and quantized.stat().st_mtime_ns == made
    texts = ["where is my parcel?", "track my package", "recipe for lasagne", "can I pay with PayPal?"]
    floats = embeddings._onnx_encoder(exported, 1)(texts)
    ints = embeddings._onnx_encoder(quantized, 1)(texts)
    assert np.all((floats * ints).sum(1) > 0.95)  # each int8 vector close to its float one
    assert float(ints[0] @ ints[1]) > float(ints[0] @ ints[2]) + 0.2  # and meaning kept


def test_kept_vectors_come_from_the_float_model_and_a_turns_text_from_the_run_time_one() -> None:
    """A knowledge base's vectors and an NLU model's training vectors are kept, so they come from the float
    model whatever `DIALOGUE_EMBEDDING_PRECISION` says (changing it re-embeds and retrains nothing); a
    turn's text is embedded by the run-time model, the int8 copy by default."""
    from dialogue.brain.nlu import embeddings

    if not embeddings.embeddings_available():
        pytest.skip("the embeddings extra is not installed")
    import numpy as np

    texts = ["where is my parcel?", "can I pay with PayPal?"]
    embeddings._encoder()  # the float export, made once per machine
    floats = embeddings._onnx_encoder(embeddings._export_path(), 1)(texts)
    assert np.allclose(embeddings.embed_many(texts), floats, atol=1e-5)
    at_run_time = np.vstack([embeddings.embed([text]) for text in texts])
    if embeddings.PRECISION == "int8":
        cosines = (at_run_time * floats).sum(1)
        assert np.all(cosines > 0.95) and np.all(cosines < 0.9999)  # close to the float vectors, not them


def test_a_turn_embeds_its_text_once_for_every_step(monkeypatch: pytest.MonkeyPatch) -> None:
    from dialogue.brain.nlu import embeddings

    if not embeddings.embeddings_available():
        pytest.skip("the embeddings extra is not installed")
    import numpy as np

    real = embeddings._encoder()
    embedded: list[str] = []

    def counting(texts: list[str]) -> Any:
        embedded.extend(texts)
        return real(texts)

    monkeypatch.setattr(embeddings, "_encoder", lambda: counting)
    question, sentences = (
        "how much is express shipping?",
        ["Express shipping costs 12.90.", "We ship to Austria."],
    )
    with embeddings.once_per_text():
        understood = embeddings.embed([question])  # understanding
        searched = embeddings.embed([question])  # retrieval
        scores = embeddings.similarities(question, sentences)  # the reply's sentences
    assert embedded.count(question) == 1
    assert np.allclose(understood, searched)
    assert scores == pytest.approx(embeddings.similarities(question, sentences), abs=1e-5)
    # Outside a turn's block nothing is kept: the next turn pays for its own embedding.
    embeddings.embed([question])
    assert embedded.count(question) == 3
