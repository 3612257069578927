"""Reply composition: templates, grounded answers with citations, clarifying questions, fallbacks."""

from __future__ import annotations

import pytest
from temporalio.exceptions import ApplicationError

from activities.generate import ReplyComposer
from dialogue.bot import BotDefinition
from dialogue.contracts import OUT_OF_SCOPE, GenerateRequest, IntentPrediction, NluResult, Passage, Reply
from dialogue.generation.grounded import GroundedGenerator, Relevance, grounded_answer

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
    assert {(await composer.compose(request("greet", turn=i))).text for i in range(2)} == set(greet.responses)


async def test_out_of_scope_gets_the_fallback(demo_bot: BotDefinition) -> None:
    reply = await compose(demo_bot, request(OUT_OF_SCOPE, passages=[RETURNS]))
    assert reply.text in demo_bot.fallback_responses


async def test_low_confidence_asks_which_of_the_two_likeliest_intents(demo_bot: BotDefinition) -> None:
    unsure = request(
        "returns", confidence=0.3, also=[IntentPrediction(name="refund_status", confidence=0.25)]
    )
    text = (await compose(demo_bot, unsure)).text
    assert "return an item" in text and "check a refund" in text
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
