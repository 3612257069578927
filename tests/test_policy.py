"""The dialogue policy, as a pure function: flows, topic changes, clarifying, fallbacks."""

from __future__ import annotations

from pathlib import Path

import pytest

from dialogue.brain.policy import decide
from dialogue.brain.python_tools import CallContext, flow_tools
from dialogue.model.contracts import OUT_OF_SCOPE, DialogueState, Entity, IntentPrediction, NluResult, Routing
from dialogue.platform.bot import BotDefinition

pytestmark = pytest.mark.unit  # pure code: `make check` runs it


def nlu(
    intent: str, confidence: float = 0.9, *, entities: dict[str, str] | None = None, second: str | None = None
) -> NluResult:
    ranking = [IntentPrediction(name=intent, confidence=confidence)]
    if second:
        ranking.append(IntentPrediction(name=second, confidence=confidence / 2))
    found = [Entity(entity=k, value=v, start=0, end=len(v)) for k, v in (entities or {}).items()]
    return NluResult(intent=ranking[0], ranking=ranking, entities=found)


IN_FLOW = DialogueState(active_flow="order_lookup", requested_slot="order_id")


def test_an_intent_with_a_flow_starts_it_and_asks_for_the_missing_slot(demo_bot: BotDefinition) -> None:
    decision = decide(demo_bot, nlu("order_status"), DialogueState())
    assert decision.action == "flow_prompt"
    assert (decision.dialogue.active_flow, decision.dialogue.requested_slot) == ("order_lookup", "order_id")


def test_a_flow_with_its_slots_given_upfront_calls_its_tool(demo_bot: BotDefinition) -> None:
    decision = decide(demo_bot, nlu("order_status", entities={"order_id": "NW-482913"}), DialogueState())
    assert decision.action == "flow_complete"
    assert decision.tool is not None
    assert (decision.tool.name, decision.tool.arguments) == ("order_status", {"order_id": "NW-482913"})


def test_the_slot_is_filled_on_the_next_turn_whatever_the_intent(demo_bot: BotDefinition) -> None:
    decision = decide(demo_bot, nlu(OUT_OF_SCOPE, 0.3, entities={"order_id": "NW-482913"}), IN_FLOW)
    assert decision.action == "flow_complete"


def test_an_invalid_value_is_refused_and_asked_again(demo_bot: BotDefinition) -> None:
    decision = decide(demo_bot, nlu(OUT_OF_SCOPE, entities={"order_id": "AB-1234"}), IN_FLOW)
    assert (decision.action, decision.invalid_slot) == ("flow_prompt", "order_id")
    assert "order_id" not in decision.dialogue.slots


def test_another_topic_is_answered_and_the_flow_waits(demo_bot: BotDefinition) -> None:
    decision = decide(demo_bot, nlu("shipping_info"), IN_FLOW)
    assert decision.action == "answer"
    assert decision.resume_flow
    assert (decision.dialogue.active_flow, decision.dialogue.requested_slot) == ("order_lookup", "order_id")
    back = decide(demo_bot, nlu("order_status", entities={"order_id": "NW-482913"}), decision.dialogue)
    assert back.action == "flow_complete"


def test_deny_cancels_the_flow(demo_bot: BotDefinition) -> None:
    decision = decide(demo_bot, nlu("deny"), IN_FLOW)
    assert decision.action == "flow_cancel"
    assert decision.dialogue.active_flow is None


def test_without_a_flow_the_intent_action_decides(demo_bot: BotDefinition) -> None:
    assert decide(demo_bot, nlu("greet"), DialogueState()).action == "respond"
    assert decide(demo_bot, nlu("returns"), DialogueState()).action == "answer"
    assert decide(demo_bot, nlu("human_agent"), DialogueState()).action == "handoff"
    assert decide(demo_bot, nlu("goodbye"), DialogueState()).action == "end"
    assert decide(demo_bot, nlu(OUT_OF_SCOPE), DialogueState()).action == "fallback"
    assert decide(demo_bot, nlu("returns", 0.3, second="refund_status"), DialogueState()).action == "clarify"


def test_entities_are_remembered_as_slots(demo_bot: BotDefinition) -> None:
    decision = decide(
        demo_bot, nlu("greet", entities={"product": "headphones"}), DialogueState(slots={"email": "a@b.c"})
    )
    assert decision.dialogue.slots == {"email": "a@b.c", "product": "headphones"}


def test_the_order_status_tool_reads_the_demo_table(demo_bot: BotDefinition) -> None:
    order_status = flow_tools(demo_bot)["order_status"]  # examples/demo/shop.py's
    context = CallContext(demo_bot, "", Path("data"))
    found = order_status(context, {"order_id": "nw-482913"})
    assert found.ok and found.data["status"] == "shipped" and "DHL" in found.data["details"]
    missing = order_status(context, {"order_id": "NW-000000"})
    assert (missing.ok, missing.retry_slot) == (False, "order_id")


def test_a_handoff_or_goodbye_leaves_the_flow(demo_bot: BotDefinition) -> None:
    handoff = decide(demo_bot, nlu("human_agent"), IN_FLOW)
    assert handoff.action == "handoff" and handoff.dialogue.active_flow is None
    assert decide(demo_bot, nlu("goodbye"), IN_FLOW).action == "end"


def test_typed_text_never_overwrites_a_trusted_slot(demo_bot: BotDefinition) -> None:
    set_by_server = DialogueState(slots={"order_id": "NW-482913"}, trusted=["order_id"])
    typed = nlu("order_status", entities={"order_id": "NW-105733"})
    decision = decide(demo_bot, typed, set_by_server)
    assert decision.action == "flow_complete"
    assert decision.tool is not None and decision.tool.arguments == {"order_id": "NW-482913"}
    assert decision.dialogue.slots["order_id"] == "NW-482913" and decision.dialogue.trusted == ["order_id"]
    in_flow = set_by_server.model_copy(update={"active_flow": "order_lookup"})
    cancelled = decide(demo_bot, nlu("deny"), in_flow)
    assert cancelled.action == "flow_cancel" and cancelled.dialogue.slots == {"order_id": "NW-482913"}


def test_a_cancelled_flow_forgets_its_slot_values(demo_bot: BotDefinition) -> None:
    gave_up = DialogueState(active_flow="order_lookup", requested_slot="order_id", slots={"order_id": "AB-1"})
    cancelled = decide(demo_bot, nlu("deny"), gave_up)
    assert "order_id" not in cancelled.dialogue.slots
    again = decide(demo_bot, nlu("order_status"), cancelled.dialogue)
    assert again.action == "flow_prompt"  # asks again instead of reusing the abandoned value


def test_slot_patterns_ignore_case(demo_bot: BotDefinition) -> None:
    decision = decide(demo_bot, nlu(OUT_OF_SCOPE, entities={"order_id": "nw-482913"}), IN_FLOW)
    assert decision.action == "flow_complete"


AFTER_AN_ANSWER = DialogueState(last_topic="shipping_info", last_action="answer")


def test_a_follow_up_the_nlu_cannot_place_continues_the_answer_before_it(demo_bot: BotDefinition) -> None:
    decision = decide(demo_bot, nlu(OUT_OF_SCOPE, 0.4), AFTER_AN_ANSWER, follow_up=True)
    assert (decision.action, decision.topic) == ("answer", "shipping_info")


def test_a_follow_up_after_no_answer_or_a_placed_message_is_not_one(demo_bot: BotDefinition) -> None:
    after_a_greeting = DialogueState(last_topic="greet", last_action="respond")
    assert decide(demo_bot, nlu(OUT_OF_SCOPE, 0.4), after_a_greeting, follow_up=True).action == "fallback"
    assert decide(demo_bot, nlu(OUT_OF_SCOPE, 0.4), AFTER_AN_ANSWER, follow_up=False).action == "fallback"
    placed = decide(demo_bot, nlu("warranty", 0.95), AFTER_AN_ANSWER, follow_up=True)
    assert (placed.action, placed.topic) == ("answer", None)


def routed(
    intent: str,
    confidence: float,
    *,
    knowledge: float,
    out_of_scope: float = 0.05,
    entities: dict[str, str] | None = None,
    second: str | None = None,
) -> NluResult:
    """An NLU result with the router's verdict (the rest of the probability on the intent's route)."""
    result = nlu(intent, confidence, entities=entities, second=second)
    routing = Routing(
        knowledge=knowledge, intent=round(1 - knowledge - out_of_scope, 4), out_of_scope=out_of_scope
    )
    return result.model_copy(update={"routing": routing})


def test_an_unsure_nlu_with_a_confident_knowledge_base_answers_from_it(demo_bot: BotDefinition) -> None:
    unsure = nlu("payment_methods", 0.3, second="complaint")
    assert decide(demo_bot, unsure, DialogueState()).action == "clarify"  # no router: as before
    decision = decide(
        demo_bot, routed("payment_methods", 0.3, knowledge=0.8, second="complaint"), DialogueState()
    )
    assert decision.action == "answer"


def test_out_of_scope_to_the_nlu_is_answered_when_the_knowledge_base_knows_it(
    demo_bot: BotDefinition,
) -> None:
    decision = decide(demo_bot, routed(OUT_OF_SCOPE, 0.8, knowledge=0.7, out_of_scope=0.25), DialogueState())
    assert decision.action == "answer"


def test_a_question_that_merely_mentions_an_order_is_answered_not_a_flow(demo_bot: BotDefinition) -> None:
    decision = decide(demo_bot, routed("order_status", 0.9, knowledge=0.7), DialogueState())
    assert decision.action == "answer"
    assert decision.dialogue.active_flow is None


def test_an_order_question_with_a_number_still_starts_the_flow(demo_bot: BotDefinition) -> None:
    asked = routed("order_status", 0.9, knowledge=0.7, entities={"order_id": "NW-482913"})
    decision = decide(demo_bot, asked, DialogueState())
    assert decision.action == "flow_complete"
    assert decision.tool is not None and decision.tool.arguments == {"order_id": "NW-482913"}


def test_what_neither_the_nlu_nor_the_knowledge_base_places_is_declined(demo_bot: BotDefinition) -> None:
    decision = decide(demo_bot, routed("product_info", 0.6, knowledge=0.1, out_of_scope=0.8), DialogueState())
    assert decision.action == "fallback"


def test_the_intent_route_keeps_the_scripted_action(demo_bot: BotDefinition) -> None:
    assert decide(demo_bot, routed("greet", 0.99, knowledge=0.01), DialogueState()).action == "respond"
    assert (
        decide(demo_bot, routed("order_status", 0.95, knowledge=0.1), DialogueState()).action == "flow_prompt"
    )
    assert decide(demo_bot, routed("human_agent", 0.95, knowledge=0.1), DialogueState()).action == "handoff"


def test_in_a_flow_a_question_the_knowledge_base_answers_is_answered_and_the_flow_waits(
    demo_bot: BotDefinition,
) -> None:
    decision = decide(demo_bot, routed(OUT_OF_SCOPE, 0.7, knowledge=0.8, out_of_scope=0.15), IN_FLOW)
    assert (decision.action, decision.resume_flow) == ("answer", True)
    assert (decision.dialogue.active_flow, decision.dialogue.requested_slot) == ("order_lookup", "order_id")
    # The flow's own question, its slot or a no still belong to the flow.
    assert decide(demo_bot, routed("deny", 0.9, knowledge=0.6), IN_FLOW).action == "flow_cancel"
    filled = routed(OUT_OF_SCOPE, 0.5, knowledge=0.8, entities={"order_id": "NW-482913"})
    assert decide(demo_bot, filled, IN_FLOW).action == "flow_complete"
