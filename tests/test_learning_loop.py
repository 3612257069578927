"""The learning loop: turns recorded through the API and a worker (one rated down, one conversation handed to a
person) are exported for review, redacted whatever the bot let the store keep; two lines are labelled, the
bot's model is trained on them, and its card names the conversations they came from; a label that is no
intent stops training at its line; the gates refuse a card below the bot's thresholds."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
import yaml
from sqlmodel import Session, col, select
from temporalio.client import Client
from typer.testing import CliRunner

from api import create_app
from dialogue.apps.cli import app
from dialogue.apps.learning.card import complete_card, conversation_tests, replay_evaluation
from dialogue.apps.learning.review import review, unsure_threshold
from dialogue.brain.nlu.annotations import Annotation, read_annotations, write_annotations
from dialogue.brain.nlu.data import DataError
from dialogue.brain.nlu.model import METADATA_FILE, ModelMetadata, ensure_bot_model
from dialogue.brain.nlu.model_card import (
    ConversationTests,
    HeldOutEvaluation,
    ModelCard,
    ReplayEvaluation,
    failed_gates,
    read_card,
)
from dialogue.brain.nlu.training_data import bot_training_data
from dialogue.platform.bot import NluGates, load_bot
from dialogue.platform.db import Message, get_engine
from dialogue.platform.settings import Settings, get_settings
from tests.conftest import api_client, bot_with, worker_for
from tests.waiting import eventually

EMAIL_TEXT = "my email is jane.doe@example.com, what's the weather like on mars?"
PIZZA = "Can you recommend a good pizza place nearby?"
SOAKED = "my parcel arrived soaking wet and the box was crushed"
SHIPPING = "how long does standard shipping take within Germany?"


def demo_nlu(settings: Settings, **changes: object) -> dict[str, object]:
    """The demo bot's `nlu:` section with absolute paths (the bot file is written elsewhere), and changes."""
    base = settings.bot_path.parent
    raw = yaml.safe_load(settings.bot_path.read_text())["nlu"]
    return {k: str(base / v) for k, v in raw.items()} | changes


@pytest.fixture
async def recorded(
    client: Client, settings: Settings, tmp_path: Path
) -> AsyncIterator[tuple[Settings, list[str]]]:
    """Two conversations through the API with a bot that stores what it is told (`redact: off`): the shipping
    answer rated down, the second conversation handed to a person after the soaked parcel; a question
    about pizza asked in both (in other case and spacing)."""
    folder = tmp_path / "served"
    folder.mkdir()
    settings = settings.model_copy(update={"bot_path": bot_with(settings, folder, privacy={"redact": "off"})})
    run = uuid.uuid4().hex[:6]
    ids = [f"learn-{run}-a", f"learn-{run}-b"]
    async with worker_for(client, settings), api_client(create_app(settings, temporal=client)) as http:
        for text in ["hello", EMAIL_TEXT, PIZZA, SHIPPING]:
            answered = await http.post(f"/v1/conversations/{ids[0]}/turns", json={"text": text})
            assert answered.status_code == 200, answered.text
            if text == SHIPPING:
                turn = answered.json()["turn_id"]
                rated = await http.post(
                    f"/v1/conversations/{ids[0]}/turns/{turn}/feedback", json={"rating": "down"}
                )
                assert rated.status_code == 201, rated.text
        for text in ["can you recommend a good  PIZZA place nearby?", SOAKED]:
            answered = await http.post(f"/v1/conversations/{ids[1]}/turns", json={"text": text})
            assert answered.status_code == 200, answered.text
        taken = await http.post(f"/v1/conversations/{ids[1]}/handoff", json={"agent": "ada", "reason": "wet"})
        assert taken.status_code == 200, taken.text

        def handed_off() -> bool:
            with Session(get_engine(settings.resolved_database_url)) as session:
                return (
                    session.exec(
                        select(Message).where(
                            col(Message.conversation_id) == f"default/{ids[1]}", col(Message.role) == "system"
                        )
                    ).first()
                    is not None
                )

        await eventually(handed_off, "the handoff in the transcript")
    yield settings, [f"default/{i}" for i in ids]


def by_text(annotations: list[Annotation]) -> dict[str, Annotation]:
    """The lines by their text, as the export tells texts apart (ignoring case and spacing)."""
    return {plain(a.text): a for a in annotations}


def plain(text: str) -> str:
    return " ".join(text.casefold().split())


@pytest.mark.parametrize("store_url", ["sqlite", "postgresql"], indirect=True)
async def test_review_exports_the_turns_worth_a_look_redacted_and_once_each(
    recorded: tuple[Settings, list[str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    settings, (first, second) = recorded
    engine = get_engine(settings.resolved_database_url)
    with Session(engine) as session:  # the store kept the address: the bot said so
        stored = session.exec(select(Message.text).where(col(Message.conversation_id) == first)).all()
    assert EMAIL_TEXT in stored

    monkeypatch.setenv("DIALOGUE_DATABASE_URL", settings.resolved_database_url)
    monkeypatch.setenv("DIALOGUE_DATA_DIR", str(settings.data_dir))
    get_settings.cache_clear()  # the command reads these settings, not a store of another test's
    request.addfinalizer(get_settings.cache_clear)
    out = tmp_path / "review.jsonl"
    exported = CliRunner().invoke(
        app, ["nlu", "review", "--out", str(out), "--tenant", "default", "--bot", str(settings.bot_path)]
    )
    assert exported.exit_code == 0, exported.output
    assert "jane.doe" not in out.read_text()
    lines = by_text([annotation for _, annotation in read_annotations(out)])
    emailed = lines[plain(EMAIL_TEXT.replace("jane.doe@example.com", "[EMAIL]"))]
    assert emailed.conversation_id == first and "out_of_scope" in emailed.reasons and emailed.label == ""
    # Said twice, one line, standing for both turns (the newer conversation's first).
    pizza = lines[plain(PIZZA)]
    assert "out_of_scope" in pizza.reasons and pizza.conversations == [second, first]
    shipping = lines[plain(SHIPPING)]
    assert (
        "rated_down" in shipping.reasons and shipping.rating == "down" and shipping.intent == "shipping_info"
    )
    assert shipping.reply and shipping.confidence is not None and shipping.nlu_model
    soaked = lines[plain(SOAKED)]
    assert "handed_off" in soaked.reasons and soaked.conversation_id == second
    # A greeting the NLU was sure of is nobody's business; below a threshold of 1 every placed turn is unsure.
    assert "hello" not in lines
    everything = by_text(review(engine, load_bot(settings.bot_path), tenant="default", unsure_below=1.0))
    assert everything["hello"].reasons == ["unsure"]
    assert unsure_threshold(load_bot(settings.bot_path)) == 0.45  # the demo's clarify_below
    # Another tenant's review holds none of them.
    assert review(engine, load_bot(settings.bot_path), tenant="other") == []


async def test_labelled_lines_train_the_next_model_whose_card_names_them(
    recorded: tuple[Settings, list[str]], tmp_path: Path, demo_model_dir: Path
) -> None:
    settings, (first, second) = recorded
    annotations = review(
        get_engine(settings.resolved_database_url), load_bot(settings.bot_path), tenant="default"
    )
    for annotation in annotations:
        labels = {plain(PIZZA): "out_of_scope", plain(SOAKED): "delivery_problem"}
        annotation.label = labels.get(plain(annotation.text), "skip")
    folder = tmp_path / "next"
    folder.mkdir()
    write_annotations(annotations, folder / "reviewed.jsonl")
    bot = load_bot(bot_with(settings, folder, nlu=demo_nlu(settings, reviewed="reviewed.jsonl")))

    data = bot_training_data(bot)
    assert sorted((plain(e.text), e.intent) for e in data.examples[-2:]) == [
        (plain(PIZZA), "out_of_scope"),
        (plain(SOAKED), "delivery_problem"),
    ]
    ensured = ensure_bot_model(bot, tmp_path / "model")
    assert ensured is not None and ensured[1]
    metadata, _ = ensured
    before = ModelMetadata.model_validate_json((demo_model_dir / METADATA_FILE).read_text())
    assert metadata.data_hash != before.data_hash  # the labels are data: the model was trained again

    card = read_card(tmp_path / "model")
    assert card.nlu_model == f"trained:{metadata.version}" and card.data_hash == metadata.data_hash
    assert card.reviewed_conversations == sorted([first, second])
    assert card.examples_per_source["reviewed.jsonl"] == 2
    assert card.examples_per_intent_and_source["delivery_problem"]["reviewed.jsonl"] == 1
    soaked = next(r for r in card.reviewed_examples if r.intent == "delivery_problem")
    assert soaked.origin.conversation_id == second and soaked.origin.turn_id
    assert soaked.origin.line == 1 + [a.text for a in annotations].index(SOAKED)
    pizza = next(r for r in card.reviewed_examples if r.intent == "out_of_scope")
    assert [pizza.origin.conversation_id, *pizza.origin.also] == [second, first]
    assert card.held_out is not None and card.held_out.data.endswith("test.jsonl")
    assert card.held_out.n_examples == 280 and card.held_out.accuracy > 0.8
    # Trained again on the same data, nothing is trained.
    assert ensure_bot_model(bot, tmp_path / "model") == (metadata, False)

    # The publisher's part: tests and replay in the card, then the gates.
    tests = ConversationTests(passed=12, failed=0)
    replay = replay_evaluation(
        {
            "summary": {
                "conversations": 2,
                "turns": 6,
                "changed_turns": 1,
                "changed_intents": 1,
                "changed_actions": 1,
                "rated_down": 1,
            }
        },
        stable_version="v3",
    )
    completed, failed = complete_card(
        tmp_path / "model", NluGates(max_changed_intents=0.2), tests=tests, replay=replay
    )
    assert failed == [] and read_card(tmp_path / "model") == completed
    _, failed = complete_card(
        tmp_path / "model", NluGates(max_changed_intents=0.1), tests=tests, replay=replay
    )
    assert failed == ["replay against v3: intents changed in 1 of 6 turns (16.7% > 10%)"]
    printed = CliRunner().invoke(app, ["nlu", "card", "--model", str(tmp_path / "model")])
    assert printed.exit_code == 0, printed.output
    assert second in printed.output and "12 passed, 0 failed" in printed.output


def test_a_label_that_is_no_intent_stops_training_at_its_line(tmp_path: Path) -> None:
    settings = Settings()
    lines = [
        Annotation(
            conversation_id="default/c",
            turn_id=f"t{n}",
            turn_index=n,
            text=text,
            intent=None,
            confidence=None,
            reasons=["unsure"],
            reply="",
            label=label,
        )
        for n, (text, label) in enumerate(
            [("where's my stuff", "order_status"), ("hm", ""), ("huh", "order_stats")]
        )
    ]
    write_annotations(lines, tmp_path / "reviewed.jsonl")
    bot = load_bot(bot_with(settings, tmp_path, nlu=demo_nlu(settings, reviewed=["reviewed.jsonl"])))
    with pytest.raises(DataError, match=r"reviewed\.jsonl:3: label 'order_stats' is no intent of the bot"):
        bot_training_data(bot)
    with pytest.raises(DataError, match=r"reviewed\.jsonl:3"):
        ensure_bot_model(bot, tmp_path / "model")
    assert not (tmp_path / "model").exists()


def card_of(accuracy: float, recall: float | None, *, failed_tests: int = 0, changed: int = 0) -> ModelCard:
    return ModelCard(
        bot="b", nlu_model="trained:x", content_hash="x", created_at="2025-01-01T00:00:00Z", data_hash="d",
        validation_hash=None, n_examples=10, examples_per_intent={}, examples_per_source={},
        examples_per_intent_and_source={}, reviewed_conversations=[], reviewed_examples=[],
        held_out=HeldOutEvaluation(data="test.jsonl", n_examples=10, accuracy=accuracy, in_scope_accuracy=accuracy,
                                   macro_f1=accuracy, out_of_scope_recall=recall),
        conversation_tests=ConversationTests(passed=3, failed=failed_tests),
        replay=ReplayEvaluation(stable_version="v1", turns=10, changed_intents=changed),
    )  # fmt: skip


def test_gates_refuse_a_card_below_the_bots_thresholds() -> None:
    gates = NluGates(min_accuracy=0.85, min_out_of_scope_recall=0.7, max_changed_intents=0.2)
    assert failed_gates(card_of(0.9, 0.8), gates) == []
    assert failed_gates(card_of(0.84, 0.8), gates) == ["held-out accuracy 0.840 < 0.85 (test.jsonl)"]
    assert failed_gates(card_of(0.9, 0.5), gates) == ["held-out out-of-scope recall 0.500 < 0.7"]
    assert (
        failed_gates(card_of(0.9, None), gates) == []
    )  # no out-of-scope example held out: nothing to recall
    assert failed_gates(card_of(0.9, 0.8, failed_tests=1), gates) == [
        "conversation tests: 1 failed (at most 0)"
    ]
    assert len(failed_gates(card_of(0.9, 0.8, changed=3), gates)) == 1
    unmeasured = card_of(0.9, 0.8).model_copy(update={"conversation_tests": None, "replay": None})
    assert failed_gates(unmeasured, gates) == [
        "conversation tests: not run",
        "replay against the stable version: not run",
    ]
    first = card_of(0.9, 0.8).model_copy(update={"replay": replay_evaluation(None, stable_version=None)})
    assert failed_gates(first, gates) == []  # the first version has nothing to be compared with
    assert conversation_tests([]) == ConversationTests(passed=0, failed=0, skipped=0)


def test_gates_read_from_the_bot_file(tmp_path: Path) -> None:
    settings = Settings()
    gates = {"min_accuracy": 0.9, "max_changed_intents": 0.05}
    bot = load_bot(bot_with(settings, tmp_path, nlu=demo_nlu(settings, reviewed="r.jsonl", gates=gates)))
    assert bot.nlu is not None and bot.nlu.reviewed == ["r.jsonl"]
    assert (bot.nlu.gates.min_accuracy, bot.nlu.gates.max_changed_intents) == (0.9, 0.05)
    assert bot.nlu.gates.min_out_of_scope_recall == NluGates().min_out_of_scope_recall
    raw = orjson.loads(orjson.dumps(bot.nlu.gates.model_dump()))
    assert set(raw) == {"min_accuracy", "min_macro_f1", "min_out_of_scope_recall", "max_changed_intents",
                        "max_failed_tests"}  # fmt: skip
