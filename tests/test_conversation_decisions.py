"""The conversation workflow's decisions, as plain functions: no Temporal, no I/O, milliseconds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from dialogue.brain.memory import offer
from dialogue.model.contracts import (
    APPROVAL_DECIDED,
    APPROVAL_FORBIDDEN,
    CONVERSATION_ENDED,
    INVALID_TURN,
    NO_SUCH_APPROVAL,
    NO_SUCH_REMINDER,
    NOT_HANDED_OFF,
    NOT_YOUR_CONVERSATION,
    QUEUE_FULL,
    STORE_BEHIND,
    TURN_IN_PROGRESS,
    AgentStepRecord,
    AgentToolCall,
    AgentToolOutcome,
    ApprovalDecision,
    ApprovalRequest,
    Approver,
    Button,
    ContextLineage,
    ConversationInput,
    ConversationState,
    Decision,
    DialogueState,
    DoubleTextPolicy,
    IntentPrediction,
    MemoryOffer,
    NluResult,
    ParkedAgent,
    Reminder,
    Reply,
    ToolResult,
)
from dialogue.platform.flags import FLAGS, FeatureFlags, TurnFlags
from workflows.conversation import decisions

pytestmark = pytest.mark.unit  # pure code: `make check` runs it

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def state(**fields: Any) -> ConversationState:
    return ConversationState(conversation_id="c", started_at=NOW, updated_at=NOW, **fields)


def refuse_turn(
    text: str = "hello",
    *,
    policy: DoubleTextPolicy = "enqueue",
    conversation: ConversationState | None = None,
    unrecorded: int = 0,
    in_flight: int = 0,
    running_turn: str | None = None,
) -> decisions.Refusal | None:
    return decisions.refuse_turn(
        ConversationInput(conversation_id="c", double_text=policy, max_text_chars=10, max_queued_turns=3),
        conversation or state(),
        text,
        unrecorded=unrecorded,
        in_flight=in_flight,
        running_turn=running_turn,
    )


def test_a_turn_is_taken_when_nothing_stands_in_its_way() -> None:
    assert refuse_turn() is None
    assert refuse_turn(in_flight=2) is None  # enqueued behind the others


@pytest.mark.parametrize(
    ("text", "kwargs", "refused_as"),
    [
        ("hello", {"conversation": state(status="ended")}, CONVERSATION_ENDED),
        ("   ", {}, INVALID_TURN),
        ("x" * 11, {}, INVALID_TURN),
        ("hello", {"unrecorded": decisions.MAX_UNRECORDED}, STORE_BEHIND),
        ("hello", {"in_flight": 3}, QUEUE_FULL),
        ("hello", {"in_flight": 1, "policy": "reject", "running_turn": "t1"}, TURN_IN_PROGRESS),
    ],
)
def test_a_turn_is_refused_before_it_enters_history(
    text: str, kwargs: dict[str, Any], refused_as: str
) -> None:
    refusal = refuse_turn(text, **kwargs)
    assert refusal is not None and refusal.type == refused_as
    if refused_as == TURN_IN_PROGRESS:
        assert refusal.details == ("t1",)


def test_a_persons_message_needs_the_conversation_handed_off() -> None:
    refusal = decisions.refuse_agent_message(state(), "hi", 10, 0)
    assert refusal is not None and refusal.type == NOT_HANDED_OFF
    assert decisions.refuse_agent_message(state(held_by="agent"), "hi", 10, 0) is None
    ended = decisions.refuse_agent_message(state(held_by="agent", status="ended"), "hi", 10, 0)
    assert ended is not None and ended.type == CONVERSATION_ENDED


def test_interrupt_lets_the_newest_turn_win() -> None:
    assert decisions.interrupts("interrupt") and not decisions.interrupts("enqueue")
    assert decisions.superseded("interrupt", arrivals=3, arrival=2)
    assert not decisions.superseded("interrupt", arrivals=2, arrival=2)
    assert not decisions.superseded("enqueue", arrivals=3, arrival=2)


def test_recent_replies_keep_the_newest() -> None:
    recent = {f"t{i}": i for i in range(25)}
    decisions.keep_recent(recent, limit=20)
    assert list(recent) == [f"t{i}" for i in range(5, 25)]


def test_a_run_continues_as_new_after_its_messages_or_when_temporal_suggests() -> None:
    assert decisions.time_to_continue(True, 200, 200, suggested=False)
    assert decisions.time_to_continue(True, 3, 200, suggested=True)
    assert not decisions.time_to_continue(True, 199, 200, suggested=False)
    assert not decisions.time_to_continue(False, 500, 200, suggested=True)  # recorded before the patch


def test_the_idle_timer_waits_out_the_quiet_spell_and_spares_a_busy_conversation() -> None:
    idle = timedelta(minutes=10)
    assert decisions.idle_wait(idle, timedelta(minutes=4), busy=False) == timedelta(minutes=6)
    assert decisions.idle_wait(idle, timedelta(minutes=10), busy=False) is None  # time to end it
    assert decisions.idle_wait(idle, timedelta(minutes=12), busy=True) == idle  # a turn runs: a new spell


def test_a_follow_up_keeps_the_topic_it_continues() -> None:
    nlu = NluResult(intent=IntentPrediction(name="out_of_scope", confidence=0.2))
    assert decisions.topic_of(Decision(action="answer", topic="shipping"), nlu) == "shipping"
    assert decisions.topic_of(Decision(action="answer"), nlu) == "out_of_scope"
    assert decisions.topic_of(None, nlu) == "out_of_scope"


def test_without_handoff_a_request_for_a_person_gets_the_fallback() -> None:
    handoff = Decision(action="handoff")
    assert decisions.without_handoff(handoff, handoff_allowed=False) == Decision(action="fallback")
    assert decisions.without_handoff(handoff, handoff_allowed=True) is handoff


def test_a_completed_flow_ends_unless_its_tool_refused_a_slot() -> None:
    done = Decision(
        action="flow_complete",
        dialogue=DialogueState(active_flow="order_status", slots={"order_id": "NW-1"}, requested_slot=None),
    )
    assert decisions.next_dialogue(done, ToolResult(ok=True)) == (None, None, {"order_id": "NW-1"})
    refused = ToolResult(ok=False, retry_slot="order_id")
    assert decisions.next_dialogue(done, refused) == ("order_status", "order_id", {})


def test_a_trusted_slot_keeps_its_value_and_is_never_asked_for_again() -> None:
    typed_over = Decision(
        action="flow_complete",
        dialogue=DialogueState(active_flow="order_status", slots={"order_id": "NW-2"}),
    )
    trusted = {"order_id": "NW-1"}
    assert decisions.next_dialogue(typed_over, ToolResult(ok=True), trusted) == (None, None, trusted)
    refused = ToolResult(ok=False, retry_slot="order_id")
    assert decisions.next_dialogue(typed_over, refused, trusted) == (None, None, trusted)
    server_set = ConversationState(
        conversation_id="c", started_at=NOW, updated_at=NOW, slots=trusted, trusted_slots=["order_id"]
    )
    assert decisions.trusted_values(server_set) == trusted
    assert decisions.dialogue_of(server_set).trusted == ["order_id"]


def test_an_end_user_reaches_only_their_own_conversations() -> None:
    assert decisions.refuse_other_user("anna", None) is None  # the tenant's server speaks for it
    assert decisions.refuse_other_user("anna", "anna") is None
    assert decisions.refuse_other_user("anna", "ben") == (NOT_YOUR_CONVERSATION, "no such conversation", ())
    assert decisions.refuse_other_user(None, "ben") is not None  # the server's own conversation


def test_older_turns_fold_with_half_of_those_that_still_fit() -> None:
    assert decisions.fold_through(None) is None
    assert decisions.fold_through(ContextLineage(turns=[3, 4, 5, 6])) is None  # nothing dropped
    assert decisions.fold_through(ContextLineage(dropped=[0, 1, 2], turns=[3, 4, 5, 6])) == 5
    assert decisions.fold_through(ContextLineage(dropped=[0, 1, 2], turns=[])) == 3


def call(call_id: str, approval: Approver | None = "agent") -> AgentToolCall:
    return AgentToolCall(
        call_id=call_id, name="start_return", arguments={"order_id": "NW-1"}, approval=approval
    )


def parked_agent() -> ParkedAgent:
    calls = [call("a"), call("b", approval="user"), call("c", approval=None)]
    pending = decisions.pending_approvals(calls, "t1", NOW)
    ran = AgentToolOutcome(call_id="c", name="start_return", ok=True, arguments_sha256="x")
    return ParkedAgent(
        turn_id="t1",
        turn_index=0,
        text="return it",
        waiting=AgentStepRecord(calls=calls, outcomes=[ran]),
        pending=pending,
    )


def test_a_channel_user_gets_buttons_for_quick_replies_the_memory_offer_and_their_own_approvals() -> None:
    pending = parked_agent().pending  # `a` is a person's to approve (the console's), `b` the user's
    asked = Reply(text="Do you want to return an item or check a refund?", quick_replies=["return an item"])
    offered = MemoryOffer(facts={"name": "Anna"}, question="Remember?")
    made = decisions.buttons(asked, pending, offered)
    assert [(b.title, b.payload) for b in made] == [
        ("return an item", "say:return an item"),
        ("Yes", "say:yes"),
        ("No", "say:no"),
        ("Approve", "approve:b"),
        ("Deny", "deny:b"),
    ]
    assert [Button.pressed(b.payload) for b in made[3:]] == [
        Button(title="b", action="approve", value="b"),
        Button(title="b", action="deny", value="b"),
    ]
    assert Button.pressed("somebody-elses:payload") is None and Button.pressed("say:") is None
    # Two calls waiting: each pair names its tool.
    both = [p.model_copy(update={"approval": "user"}) for p in pending]
    assert [b.title for b in decisions.buttons(Reply(text="?"), both, None)] == [
        "Approve start_return",
        "Deny start_return",
        "Approve start_return",
        "Deny start_return",
    ]
    assert decisions.buttons(Reply(text="Hello!"), [], None) == []


def test_an_event_no_reminder_waits_for_is_refused_before_it_enters_history() -> None:
    waiting = Reminder(id="r1", text="Shipped!", due_at=NOW, by="key", on_event="order-shipped:NW-1")
    assert decisions.refuse_event(state(reminders=[waiting]), "order-shipped:NW-1") is None
    refused = decisions.refuse_event(state(reminders=[waiting]), "order-shipped:NW-2")
    assert refused is not None and refused.type == NO_SUCH_REMINDER
    timed = waiting.model_copy(update={"on_event": None})  # said at a time: no event makes it due
    assert decisions.refuse_event(state(reminders=[timed]), "order-shipped:NW-1") is not None


def test_approvals_wait_for_the_calls_that_need_one_each_with_its_expiry() -> None:
    parked = parked_agent()
    assert [p.call_id for p in parked.pending] == ["a", "b"]
    assert parked.pending[0].expires_at == NOW + timedelta(seconds=900)
    assert decisions.parked_with([parked], "b") is parked
    assert decisions.parked_with([parked], "c") is None
    assert decisions.asking(parked.pending) == (
        "Before I go on: start_return (order_id: NW-1) needs the approval of a member of our team; "
        "start_return (order_id: NW-1) needs your approval."
    )


def test_an_approval_is_refused_when_unknown_decided_or_not_the_callers_to_make() -> None:
    parked = parked_agent()

    def refused(call_id: str, as_agent: bool = True) -> str | None:
        request = ApprovalRequest(call_id=call_id, approve=True, by="k", as_agent=as_agent)
        refusal = decisions.refuse_approval(state(), decisions.parked_with([parked], call_id), request)
        return refusal.type if refusal else None

    assert refused("zzz") == NO_SUCH_APPROVAL
    assert refused("a", as_agent=False) == APPROVAL_FORBIDDEN
    assert refused("b", as_agent=False) is None
    parked.decisions["a"] = ApprovalDecision(approved=True, by="k", role="agent", at=NOW)
    assert refused("a") == APPROVAL_DECIDED


def test_a_user_approval_of_an_end_users_conversation_is_theirs_alone() -> None:
    parked = parked_agent()

    def refused(user: str | None, *, as_agent: bool = False) -> str | None:
        request = ApprovalRequest(call_id="b", approve=True, by="k", as_agent=as_agent, user=user)
        refusal = decisions.refuse_approval(state(), parked, request, owner="anna")
        return refusal.type if refusal else None

    assert refused("anna") is None
    assert refused("ben") == NOT_YOUR_CONVERSATION
    assert refused(None) == APPROVAL_FORBIDDEN  # the tenant's server key
    assert refused(None, as_agent=True) == APPROVAL_FORBIDDEN  # nor a person of the team


def test_after_the_decisions_each_call_has_its_outcome_in_order() -> None:
    parked = parked_agent()
    parked.decisions["a"] = ApprovalDecision(approved=True, by="k", role="agent", at=NOW)
    assert not decisions.decided(parked)
    assert [p.call_id for p in decisions.undecided([parked])] == ["b"]
    decisions.time_out(parked, NOW)  # b was never decided
    assert decisions.decided(parked)
    assert decisions.decision_label(parked.decisions["b"]) == "timeout"
    assert [c.call_id for c in decisions.approved_calls(parked)] == ["a"]
    made = {"a": AgentToolOutcome(call_id="a", name="start_return", ok=True, arguments_sha256="x")}
    made |= {o.call_id: o for o in parked.waiting.outcomes}
    outcomes = decisions.outcomes_after_decisions(parked, made)
    assert [(o.call_id, o.ok) for o in outcomes] == [("a", True), ("b", False), ("c", True)]
    assert outcomes[0].approval == parked.decisions["a"]
    assert outcomes[1].error == "not approved: no one decided in time; the call was not made"
    assert decisions.resumption_id(parked) == "t1.resumed-1"
    again = decisions.parked_again(parked, [], parked.waiting, parked.pending)
    assert again.decisions == {} and decisions.resumption_id(again) == "t1.resumed-2"


def test_turn_flags_have_one_set_of_defaults() -> None:
    assert TurnFlags.of({}) == TurnFlags()  # a turn sent before flags: the behaviour of then
    assert TurnFlags.of({"handoff": False, "unknown": True}).handoff is False
    resolved = FeatureFlags.resolve({}, generator="grounded").percent
    assert {flag: resolved[flag] for flag in FLAGS if flag != "llm_generator"} == {
        flag: 100.0 if getattr(TurnFlags(), flag) else 0.0 for flag in FLAGS if flag != "llm_generator"
    }


def test_an_offer_to_remember_stands_only_when_the_reply_made_it() -> None:
    offered = MemoryOffer(facts={"name": "Anna"}, turn_id="t1", question=offer({"name": "Anna"}))
    decision = Decision(action="respond", memory_offer=offered)
    made = Reply(text=f"Hello! {offered.question}")
    assert decisions.memory_offer_made(decision, made) == offered
    # A step failed and the user got the fallback: they were not asked, so "yes" next is not a consent.
    assert decisions.memory_offer_made(decision, Reply(text="Sorry, something went wrong.")) is None
    assert decisions.memory_offer_made(Decision(action="respond"), made) is None
    assert decisions.memory_offer_made(None, made) is None
