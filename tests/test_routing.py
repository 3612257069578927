"""The router on the demo bot's trained model and knowledge base: what it weighs, and where it sends a
message, through the `understand` step as the worker runs it (a real index over a SQLite store)."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.testing import ActivityEnvironment

from activities.retrieve import RetrieveActivity
from activities.understand import UnderstandActivity
from dialogue.brain.knowledge.search import MemoryIndex
from dialogue.brain.nlu.model import load
from dialogue.brain.nlu.parser import ModelParser
from dialogue.model.contracts import Understanding, UnderstandRequest
from dialogue.platform.bot import BotDefinition
from dialogue.platform.db import get_engine


@pytest.fixture(scope="module")
def understand(demo_bot: BotDefinition, demo_model_dir: Path, demo_store: Path) -> UnderstandActivity:
    index = MemoryIndex(get_engine(f"sqlite:///{demo_store}"), reload_seconds=0)
    parser = ModelParser(demo_bot, load(demo_model_dir))
    return UnderstandActivity(demo_bot, parser, search=RetrieveActivity(index).search)


def understood(activity: UnderstandActivity, text: str) -> Understanding:
    result = ActivityEnvironment().run(activity.understand, UnderstandRequest(text=text))
    assert isinstance(result, Understanding)
    return result


def test_the_demo_model_has_a_router_calibrated_on_its_knowledge_base(demo_model_dir: Path) -> None:
    model = load(demo_model_dir)
    assert model.router is not None and model.metadata is not None and model.metadata.router


def test_a_topic_no_intent_covers_is_answered_from_the_article_that_does(
    understand: UnderstandActivity,
) -> None:
    # No intent of the demo is about the student discount: the classifier is unsure or says out of scope.
    result = understood(understand, "is there a discount for students")
    assert result.nlu.intent.name != "student_discount"
    assert result.nlu.routing is not None and result.nlu.routing.best == "knowledge"
    assert result.nlu.routing.document_id == "student-discount"
    assert result.decision.action == "answer" and result.needs_knowledge


def test_an_order_question_with_a_number_still_starts_the_flow(understand: UnderstandActivity) -> None:
    result = understood(understand, "where is my order NW-482913?")
    assert result.decision.action == "flow_complete"
    assert result.decision.tool is not None and result.decision.tool.arguments == {"order_id": "NW-482913"}


@pytest.mark.parametrize(
    ("text", "action"),
    [
        ("hello", "respond"),
        ("thanks a lot", "respond"),
        ("I want to speak to a human", "handoff"),
        ("where is my order?", "flow_prompt"),
        ("tell me a joke", "fallback"),
        ("who won the football world cup", "fallback"),
    ],
)
def test_scripted_intents_and_out_of_domain_text_keep_their_way(
    understand: UnderstandActivity, text: str, action: str
) -> None:
    result = understood(understand, text)
    assert result.decision.action == action
    assert result.nlu.routing is not None and result.nlu.routing.best != "knowledge"
