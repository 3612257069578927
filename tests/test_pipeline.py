"""The first turn pipeline on the demo bot: keyword NLU, BM25 retrieval, the template generator."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.exceptions import ApplicationError

from activities.generate import TemplateGenerator
from activities.retrieve import Bm25Index
from activities.understand import OUT_OF_SCOPE, KeywordNlu
from dialogue.bot import BotDefinition, load_bot
from dialogue.settings import Settings
from workflows.contracts import GenerateRequest, IntentPrediction, NluResult, Passage


@pytest.fixture(scope="module")
def bot() -> BotDefinition:
    return load_bot(Settings().bot_path)


def test_demo_bot_loads_intents_and_knowledge(bot: BotDefinition) -> None:
    assert {"greet", "shipping", "returns"} <= {intent.name for intent in bot.intents}
    assert {doc.id for doc in bot.documents} >= {"shipping", "returns", "orders", "warranty"}
    assert bot.documents[0].title and "#" not in bot.documents[0].title


@pytest.mark.parametrize(
    ("text", "intent"),
    [
        ("hello", "greet"),
        ("Hi there!", "greet"),
        ("I want a refund for my headphones", "returns"),
        ("Where is my order?", "order_status"),
        ("what is the capital of peru", OUT_OF_SCOPE),
    ],
)
def test_keyword_nlu_finds_the_intent(bot: BotDefinition, text: str, intent: str) -> None:
    assert KeywordNlu(bot).parse(text).intent.name == intent


def test_keyword_nlu_matches_whole_words_only(bot: BotDefinition) -> None:
    # "this" contains "hi" but is not a greeting.
    assert KeywordNlu(bot).parse("this is it").intent.name == OUT_OF_SCOPE


def test_more_keywords_give_more_confidence(bot: BotDefinition) -> None:
    nlu = KeywordNlu(bot)
    one = nlu.parse("refund").intent.confidence
    two = nlu.parse("return it for a refund").intent.confidence
    assert 0 < one < two < 1


def test_entities_come_from_the_bot_patterns(bot: BotDefinition) -> None:
    result = KeywordNlu(bot).parse("order NW-123456, mail me at ana@example.org")
    found = {(e.entity, e.value) for e in result.entities}
    assert found == {("order_id", "NW-123456"), ("email", "ana@example.org")}
    order = next(e for e in result.entities if e.entity == "order_id")
    assert "order NW-123456, mail"[order.start : order.end] == "NW-123456"


def test_bm25_ranks_the_passage_that_answers_first(bot: BotDefinition) -> None:
    passages = Bm25Index(bot.documents).search("how much does express shipping cost", top_k=3)
    assert passages[0].document_id == "shipping"
    assert "12.90" in passages[0].text
    assert [p.score for p in passages] == sorted((p.score for p in passages), reverse=True)


def test_bm25_finds_nothing_for_unknown_words(bot: BotDefinition) -> None:
    assert Bm25Index(bot.documents).search("zebra quantum", top_k=3) == []
    assert Bm25Index([]).search("shipping", top_k=3) == []


def _request(intent: str, passages: list[Passage], turn_index: int = 0) -> GenerateRequest:
    return GenerateRequest(
        text="...",
        turn_index=turn_index,
        nlu=NluResult(intent=IntentPrediction(name=intent, confidence=0.9)),
        passages=passages,
    )


PASSAGE = Passage(document_id="returns", title="Returns", text="Return within 30 days.", score=3.0)


def test_generator_grounds_an_answer_in_the_best_passage_and_cites_it(bot: BotDefinition) -> None:
    reply = TemplateGenerator(bot).generate(_request("returns", [PASSAGE]))
    assert "Return within 30 days." in reply.text
    assert [s.document_id for s in reply.sources] == ["returns"]


def test_generator_falls_back_when_no_passage_is_trusted(bot: BotDefinition) -> None:
    weak = PASSAGE.model_copy(update={"score": bot.min_answer_score / 2})
    reply = TemplateGenerator(bot).generate(_request(OUT_OF_SCOPE, [weak]))
    assert reply.text in bot.fallback_responses
    assert reply.sources == []


def test_generator_rotates_respond_templates_by_turn(bot: BotDefinition) -> None:
    generator = TemplateGenerator(bot)
    texts = {generator.generate(_request("greet", [], turn_index=i)).text for i in range(2)}
    assert len(texts) == 2


def test_a_broken_template_is_a_non_retryable_error(tmp_path: Path) -> None:
    bot = BotDefinition(name="broken", answer_template="{nope}", knowledge_dir=None)
    with pytest.raises(ApplicationError) as raised:
        TemplateGenerator(bot).generate(_request(OUT_OF_SCOPE, [PASSAGE]))
    assert raised.value.non_retryable
