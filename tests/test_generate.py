"""Reply composition: templates, grounded answers with citations, clarifying questions, fallbacks."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
from temporalio.exceptions import ApplicationError

from activities.generate import ReplyComposer
from dialogue.brain.generation.grounded import GroundedGenerator, Relevance, grounded_answer
from dialogue.brain.generation.rubric import Marks, dangling_reference, mark
from dialogue.brain.knowledge.chunking import sentences
from dialogue.model.contracts import (
    OUT_OF_SCOPE,
    GenerateRequest,
    IntentPrediction,
    NluResult,
    Passage,
    Reply,
)
from dialogue.platform.bot import BotDefinition

pytestmark = pytest.mark.unit  # pure code: `make check` runs it

RETURNS = Passage(
    document_id="returns",
    title="Returns and refunds",
    text=(
        "You can return any item within 30 days of delivery for a full refund. The item must be complete. "
        "Refunds are issued to the original payment method within 5 business days after the parcel reaches us."
    ),
    score=0.03,
    lexical_score=4.0,
    semantic_score=0.72,
    chunk_id="returns:1:0",
    document_version=1,
)
WEAK = RETURNS.model_copy(update={"document_id": "weak", "semantic_score": 0.1, "lexical_score": 0.2})


def request(
    intent: str,
    confidence: float = 0.9,
    passages: list[Passage] | None = None,
    *,
    also: list[IntentPrediction] | None = None,
    turn: int = 0,
) -> GenerateRequest:
    ranking = [IntentPrediction(name=intent, confidence=confidence), *(also or [])]
    return GenerateRequest(
        text="how long does a refund take?",
        turn_index=turn,
        nlu=NluResult(intent=ranking[0], ranking=ranking),
        passages=passages or [],
    )


async def compose(bot: BotDefinition, generate: GenerateRequest) -> Reply:
    return await ReplyComposer(bot, GroundedGenerator(Relevance())).compose(generate)


def test_the_grounded_answer_takes_the_matching_sentences_and_cites_them() -> None:
    answer = grounded_answer("how many days until the refund is issued?", [RETURNS], Relevance())
    assert answer is not None
    assert "Refunds are issued to the original payment method within 5 business days" in answer.text
    assert "The item must be complete" not in answer.text  # a sentence that does not answer
    assert [(s.document_id, s.chunk_id, s.document_version) for s in answer.sources] == [
        ("returns", "returns:1:0", 1)
    ]


def test_no_trusted_passage_means_no_answer() -> None:
    assert grounded_answer("refund?", [WEAK], Relevance()) is None
    lexical_only = RETURNS.model_copy(update={"semantic_score": None, "lexical_score": 0.5})
    assert grounded_answer("refund?", [lexical_only], Relevance(min_lexical=1.0)) is None


SHIPPING = RETURNS.model_copy(
    update={
        "document_id": "shipping",
        "title": "Shipping and delivery",
        "text": (
            "Standard shipping within the EU takes 3 to 5 business days and is free for orders over 50 euros. "
            "Below that, standard shipping costs 4.90 euros. Express shipping costs 12.90 euros."
        ),
        "chunk_id": "shipping:1:0",
    }
)
NEWSLETTER = RETURNS.model_copy(
    update={
        "document_id": "newsletter",
        "title": "Newsletter",
        "text": (
            "It takes effect immediately, although newsletters already scheduled may still arrive. "
            "Every newsletter has an unsubscribe link at the bottom of the e-mail."
        ),
        "chunk_id": "newsletter:1:1",
    }
)


def test_a_sentence_that_leans_on_the_one_before_brings_it_along() -> None:
    answer = grounded_answer("how much is standard shipping below 50 euros?", [SHIPPING], Relevance())
    assert answer is not None
    assert answer.text.startswith("Standard shipping within the EU takes 3 to 5 business days")
    assert "Below that, standard shipping costs 4.90 euros." in answer.text
    assert mark(sentences(answer.text), ["4.90 euros"], follows(SHIPPING)) == Marks(
        fact=True, dangling=None, words=len(answer.text.split())
    )


def test_a_sentence_whose_antecedent_is_not_in_its_passage_is_not_said() -> None:
    # "It" is the unsubscribing of the chunk before: this chunk cannot say what it is.
    answer = grounded_answer("does unsubscribing take effect immediately?", [NEWSLETTER], Relevance())
    assert answer is not None
    assert answer.text == "Every newsletter has an unsubscribe link at the bottom of the e-mail."


def test_the_sentence_that_answers_leads() -> None:
    answer = grounded_answer("how much does express shipping cost?", [SHIPPING], Relevance())
    assert answer is not None
    assert answer.text.startswith("Express shipping costs 12.90 euros.")


def test_closeness_in_meaning_picks_a_sentence_that_shares_no_word_with_the_question() -> None:
    def similarity(question: str, said: list[str]) -> list[float]:
        return [0.9 if "5 business days" in sentence else 0.1 for sentence in said]

    question = "when do I get my money?"
    plain = grounded_answer(question, [RETURNS], Relevance())
    weighed = grounded_answer(question, [RETURNS], Relevance(), similarity)
    assert plain is not None and weighed is not None
    assert weighed.text.startswith("Refunds are issued to the original payment method within 5 business days")
    assert not plain.text.startswith("Refunds are issued")


def test_what_two_articles_both_say_is_said_once() -> None:
    orders = RETURNS.model_copy(
        update={
            "document_id": "orders",
            "text": "If the tracking status has not changed for five business days, contact us with your order number.",
        }
    )
    parcels = RETURNS.model_copy(
        update={
            "document_id": "parcels",
            "text": "If the tracking status has not changed for 5 business days, contact us with your order number.",
        }
    )
    answer = grounded_answer("the tracking status has not changed, what now?", [orders, parcels], Relevance())
    assert answer is not None
    assert answer.text.count("tracking status") == 1


@pytest.mark.parametrize(
    ("sentence", "reference"),
    [
        ("Below that, standard shipping costs 4.90 euros.", "Below that"),
        ("It takes effect immediately.", "It"),
        ("However, gift cards are excluded.", "However"),
        ("Customs duties for these countries are paid by the recipient.", "these countries"),
        ("Please do not send returns to this address.", "this address"),
        ("There, choose Return items.", "There"),
        ("Express shipping costs 12.90 euros.", None),
        ("There is no fee for card payments.", None),
        ("Items such as cables are accepted.", None),
        ("If you find the same product cheaper, we refund the difference.", None),
    ],
)
def test_a_dangling_reference_is_a_pointer_to_a_sentence_not_said(
    sentence: str, reference: str | None
) -> None:
    assert dangling_reference(sentence) == reference


def test_the_rubric_resolves_a_reference_only_by_the_sentence_it_follows() -> None:
    said = ["Express shipping costs 12.90 euros.", "Below that, standard shipping costs 4.90 euros."]
    marks = mark(said, ["4.90 euros"], follows(SHIPPING))
    assert (marks.fact, marks.dangling) == (True, "Below that")
    assert mark(said[:1], ["4.90 euros"], follows(SHIPPING)).fact is False
    assert mark(said[:1], [], follows(SHIPPING)).fact is None


def follows(*passages: Passage) -> Callable[[str, str], bool]:
    pairs = {pair for p in passages for pair in itertools.pairwise(sentences(p.text))}
    return lambda before, after: (before, after) in pairs


async def test_composer_answers_from_the_knowledge_base(demo_bot: BotDefinition) -> None:
    reply = await compose(demo_bot, request("refund_status", passages=[RETURNS]))
    assert "5 business days" in reply.text
    assert reply.sources[0].document_id == "returns"


async def test_composer_says_plainly_when_the_knowledge_base_has_no_answer(demo_bot: BotDefinition) -> None:
    reply = await compose(demo_bot, request("refund_status", passages=[WEAK]))
    assert reply.text in demo_bot.no_answer_responses
    assert reply.sources == []


async def test_composer_uses_templates_for_respond_intents(demo_bot: BotDefinition) -> None:
    composer = ReplyComposer(demo_bot, GroundedGenerator(Relevance()))
    greet = demo_bot.intent("greet")
    assert greet is not None
    plain = {response for response in greet.responses if "{memory." not in response}
    assert {(await composer.compose(request("greet", turn=i))).text for i in range(2)} == plain  # no memory


async def test_out_of_scope_gets_the_fallback(demo_bot: BotDefinition) -> None:
    reply = await compose(demo_bot, request(OUT_OF_SCOPE, passages=[RETURNS]))
    assert reply.text in demo_bot.fallback_responses


async def test_low_confidence_asks_which_of_the_two_likeliest_intents(demo_bot: BotDefinition) -> None:
    unsure = request(
        "returns", confidence=0.3, also=[IntentPrediction(name="refund_status", confidence=0.25)]
    )
    asked = await compose(demo_bot, unsure)
    assert "return an item" in asked.text and "check a refund" in asked.text
    # Each choice a quick reply (a button on a channel), which the NLU reads back as its intent.
    assert asked.quick_replies == ["return an item", "check a refund"]
    sure = request(
        "returns",
        confidence=0.8,
        passages=[RETURNS],
        also=[IntentPrediction(name="refund_status", confidence=0.1)],
    )
    assert "return an item" not in (await compose(demo_bot, sure)).text


async def test_a_broken_template_is_a_non_retryable_error() -> None:
    bot = BotDefinition(name="broken", answer_template="{nope}", knowledge_dir=None)
    with pytest.raises(ApplicationError) as raised:
        await compose(bot, request("anything", passages=[RETURNS]))
    assert raised.value.non_retryable
