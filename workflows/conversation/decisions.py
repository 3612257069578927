"""What the conversation does next, decided by plain functions over plain data.

The workflow's roles orchestrate (they await activities, timers and updates, and keep state); every choice
they make is one of these functions, unit-tested without Temporal (tests/test_conversation_decisions.py).
Nothing here calls Temporal, reads a clock or does I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping
from datetime import datetime, timedelta
from typing import Any, NamedTuple, TypeVar

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from dialogue.brain.agent.declarations import arguments_digest
    from dialogue.model.contracts import (
        APPROVAL_DECIDED,
        APPROVAL_FORBIDDEN,
        CONVERSATION_ENDED,
        INVALID_REMINDER,
        INVALID_TURN,
        NO_SUCH_APPROVAL,
        NO_SUCH_REMINDER,
        NOT_HANDED_OFF,
        NOT_YOUR_CONVERSATION,
        OUT_OF_SCOPE,
        QUEUE_FULL,
        REMINDERS_FULL,
        STORE_BEHIND,
        TURN_IN_PROGRESS,
        AgentStepRecord,
        AgentToolCall,
        AgentToolOutcome,
        ApprovalDecision,
        ApprovalRequest,
        Button,
        ContextLineage,
        ConversationInput,
        ConversationState,
        Decision,
        DialogueState,
        IntentPrediction,
        MemoryOffer,
        NluResult,
        ParkedAgent,
        PendingApproval,
        ReminderRequest,
        Reply,
        ToolResult,
    )

K = TypeVar("K")
V = TypeVar("V")

RECENT_TURNS = 20
"""Replies a run remembers and hands over: a turn retried across continue-as-new gets its reply back.
Twice the longest queue, so that a queued turn that timed out at the API can still be collected."""
MAX_UNRECORDED = 20
"""Transcript writes a conversation keeps waiting for the store at most. Beyond, turns and a person's
messages are refused (503 with `Retry-After`) rather than growing the workflow's state without bound."""


class Refusal(NamedTuple):
    """Why an update is rejected before it enters history: an `ApplicationError`'s type and message."""

    type: str
    message: str
    details: tuple[object, ...] = ()


# Admission: what an update's validator refuses.


def refuse_if_ended(state: ConversationState) -> Refusal | None:
    if state.status != "active":
        return Refusal(CONVERSATION_ENDED, "the conversation has ended")
    return None


def refuse_if_store_behind(unrecorded: int) -> Refusal | None:
    if unrecorded >= MAX_UNRECORDED:
        return Refusal(
            STORE_BEHIND, f"{unrecorded} messages are waiting for the store to record them; retry shortly"
        )
    return None


def refuse_other_user(owner: str | None, user: str | None) -> Refusal | None:
    """An end user reaches only the conversations that belong to them (a key without a user, the tenant's
    server, reaches all of its tenant's); to anyone else, theirs does not exist."""
    if user is not None and user != owner:
        return Refusal(NOT_YOUR_CONVERSATION, "no such conversation")
    return None


def refuse_text(text: str, max_chars: int) -> Refusal | None:
    if not text.strip():
        return Refusal(INVALID_TURN, "text must not be empty")
    if len(text) > max_chars:
        return Refusal(INVALID_TURN, f"text is longer than {max_chars} characters")
    return None


def refuse_turn(
    input: ConversationInput,
    state: ConversationState,
    text: str,
    *,
    unrecorded: int,
    in_flight: int,
    running_turn: str | None,
) -> Refusal | None:
    """A new turn is refused when the conversation ended, the text is empty or too long, the store is too
    far behind, another turn runs under the `reject` policy, or the queue is full."""
    refusal = (
        refuse_if_ended(state)
        or refuse_text(text, input.max_text_chars)
        or refuse_if_store_behind(unrecorded)
    )
    if refusal is not None:
        return refusal
    if input.double_text == "reject" and in_flight:
        return Refusal(TURN_IN_PROGRESS, f"turn {running_turn} is still running", (running_turn,))
    if in_flight >= input.max_queued_turns:
        return Refusal(QUEUE_FULL, f"{in_flight} turns are already waiting")
    return None


MAX_REMINDERS = 20
"""Reminders one conversation holds at most: each is a timer and a place in the state."""
MAX_REMINDER_AHEAD = timedelta(days=366)
"""How far ahead a reminder may be due: a conversation waits for its reminders before it closes."""


def refuse_reminder(
    state: ConversationState, request: ReminderRequest, now: datetime, max_chars: int
) -> Refusal | None:
    """A reminder needs an open conversation, words to send, a time a year ahead at most (one due already
    is sent at once), and room."""
    refusal = refuse_if_ended(state) or refuse_text(request.text, max_chars)
    if refusal is not None:
        return refusal
    if request.due_at.tzinfo is None:
        return Refusal(INVALID_REMINDER, "due_at needs a time zone (an offset, or Z for UTC)")
    if request.due_at > now + MAX_REMINDER_AHEAD:
        return Refusal(INVALID_REMINDER, "due_at is more than a year ahead")
    if len(state.reminders) >= MAX_REMINDERS:
        return Refusal(REMINDERS_FULL, f"the conversation holds {MAX_REMINDERS} reminders already")
    return None


def refuse_event(state: ConversationState, name: str) -> Refusal | None:
    """An event no reminder waits for is refused before it enters history: a report the visibility store
    matched to a conversation late (its reminder said or dropped since) leaves no trace there."""
    if all(r.on_event != name for r in state.reminders):
        return Refusal(NO_SUCH_REMINDER, f"no reminder waits for the event {name!r}")
    return None


def refuse_cancel_reminder(state: ConversationState, reminder_id: str) -> Refusal | None:
    if all(r.id != reminder_id for r in state.reminders):
        return Refusal(NO_SUCH_REMINDER, f"no reminder {reminder_id!r} is waiting")
    return None


def refuse_agent_message(
    state: ConversationState, text: str, max_chars: int, unrecorded: int
) -> Refusal | None:
    """A person's message needs the conversation handed off to a person."""
    refusal = refuse_if_ended(state) or refuse_text(text, max_chars) or refuse_if_store_behind(unrecorded)
    if refusal is None and state.held_by != "agent":
        return Refusal(NOT_HANDED_OFF, "the bot holds this conversation: hand it off first")
    return refusal


def refuse_approval(
    state: ConversationState,
    parked: ParkedAgent | None,
    request: ApprovalRequest,
    *,
    owner: str | None = None,
) -> Refusal | None:
    """A decision is for a call that waits, not decided yet, by someone allowed to make it: an `agent`
    approval by a person with the agent scope; a `user` approval by the conversation's end user (`owner`)
    alone, or, in a conversation without one, by any key of the tenant."""
    refusal = refuse_other_user(owner, request.user) or refuse_if_ended(state)
    if refusal is not None:
        return refusal
    if parked is None:
        return Refusal(NO_SUCH_APPROVAL, f"no tool call {request.call_id!r} waits for approval")
    if request.call_id in parked.decisions:
        return Refusal(APPROVAL_DECIDED, f"tool call {request.call_id!r} is decided already")
    pending = next(p for p in parked.pending if p.call_id == request.call_id)
    if pending.approval == "agent" and not request.as_agent:
        return Refusal(
            APPROVAL_FORBIDDEN, f"{pending.name} needs a person's approval (a key with the agent scope)"
        )
    if pending.approval == "user" and owner is not None and request.user != owner:
        return Refusal(APPROVAL_FORBIDDEN, f"{pending.name} needs the approval of the conversation's user")
    return None


# Ordering and double-texting.


def interrupts(policy: str) -> bool:
    """Under `interrupt`, a new turn cancels the one being answered."""
    return policy == "interrupt"


def superseded(policy: str, arrivals: int, arrival: int) -> bool:
    """Under `interrupt`, a turn that a newer one overtook while it waited is not answered by the bot."""
    return policy == "interrupt" and arrivals > arrival


def keep_recent(recent: MutableMapping[K, V], limit: int = RECENT_TURNS) -> None:
    """Drop the oldest entries (insertion order) beyond `limit`."""
    while len(recent) > limit:
        del recent[next(iter(recent))]


# The run's life: idle timeout and continue-as-new.


def time_to_continue(can_continue: bool, messages_this_run: int, turns_per_run: int, suggested: bool) -> bool:
    """A run continues as new after `turns_per_run` messages, or when Temporal suggests it."""
    return can_continue and (messages_this_run >= turns_per_run or suggested)


def idle_wait(idle: timedelta, quiet_for: timedelta, *, busy: bool) -> timedelta | None:
    """How long the idle timer waits now; None when the conversation has been quiet long enough to end.
    A turn running or an approval awaited keeps it open (approvals time out on their own): a whole spell."""
    left = idle - quiet_for
    if left > timedelta(0):
        return left
    return idle if busy else None


# A turn's outcome and the dialogue's state.


def not_understood() -> NluResult:
    """The NLU result of a turn whose understanding failed or did not finish."""
    return NluResult(intent=IntentPrediction(name=OUT_OF_SCOPE, confidence=0.0))


def topic_of(decision: Decision | None, nlu: NluResult) -> str:
    """A follow-up the NLU could not place is about the topic it continues ("and to Austria?")."""
    return decision.topic if decision is not None and decision.topic else nlu.intent.name


def without_handoff(decision: Decision | None, handoff_allowed: bool) -> Decision | None:
    """No person may take over: the bot stays, and its fallback says what it can help with."""
    if decision is not None and decision.action == "handoff" and not handoff_allowed:
        return decision.model_copy(update={"action": "fallback"})
    return decision


def dialogue_of(state: ConversationState) -> DialogueState:
    """What the policy decides from: the flow, its slots, the last topic and action."""
    return DialogueState(
        active_flow=state.active_flow,
        slots=state.slots,
        requested_slot=state.requested_slot,
        trusted=state.trusted_slots,
        last_topic=state.last_intent,
        last_action=state.last_action,
        memory_offer=state.memory_offer,
    )


def memory_offer_made(decision: Decision | None, reply: Reply) -> MemoryOffer | None:
    """The offer to remember the user that the reply made, which their next message may answer; None when
    the decision made none or the reply is not the one that words it (a step failed: the fallback)."""
    offered = decision.memory_offer if decision is not None else None
    made = offered is not None and offered.question and reply.text.endswith(offered.question)
    return offered if made else None


def buttons(reply: Reply, approvals: Iterable[PendingApproval], offer: MemoryOffer | None) -> list[Button]:
    """What a channel's user may tap under a reply: its quick replies, Yes and No to an offer to remember
    them, and Approve and Deny for each call waiting for their approval (a person's approvals are the
    console's)."""
    made = [Button(title=text, action="say", value=text) for text in reply.quick_replies]
    if offer is not None:
        made += [Button(title="Yes", action="say", value="yes"), Button(title="No", action="say", value="no")]
    waiting = [p for p in approvals if p.approval == "user"]
    for pending in waiting:
        named = f" {pending.name}" if len(waiting) > 1 else ""
        made += [
            Button(title=f"Approve{named}", action="approve", value=pending.call_id),
            Button(title=f"Deny{named}", action="deny", value=pending.call_id),
        ]
    return made


def trusted_values(state: ConversationState) -> dict[str, Any]:
    """The slots the integrator's server set, as they were set: typed text never changes them."""
    return {name: state.slots[name] for name in state.trusted_slots if name in state.slots}


class DialogueFields(NamedTuple):
    active_flow: str | None
    requested_slot: str | None
    slots: dict[str, Any]


def next_dialogue(
    decision: Decision, tool_result: ToolResult | None, trusted: dict[str, Any] | None = None
) -> DialogueFields:
    """The policy's new dialogue state, and what the flow's tool call changed: a completed flow ends,
    unless its tool refused a slot's value, which is then asked for again (not a `trusted` one: the
    integrator's value stands, and the flow ends with the tool's answer)."""
    dialogue = decision.dialogue
    active_flow, requested_slot, slots = dialogue.active_flow, dialogue.requested_slot, dict(dialogue.slots)
    trusted = trusted or {}
    slots.update(trusted)  # whatever the policy did, the integrator's slots keep their values
    if decision.action == "flow_complete":
        if (
            tool_result is not None
            and not tool_result.ok
            and tool_result.retry_slot
            and tool_result.retry_slot not in trusted
        ):
            slots.pop(tool_result.retry_slot, None)
            requested_slot = tool_result.retry_slot
        else:
            active_flow, requested_slot = None, None
    return DialogueFields(active_flow, requested_slot, slots)


def fold_through(context: ContextLineage | None) -> int | None:
    """The turn before which older turns are folded into the summary, when turns no longer fit the budget:
    with the older half of those that still fit, so that the next fold is many turns away (a full window
    would otherwise overflow, and call the model to fold, at every turn). None: nothing to fold."""
    if context is None or not context.dropped:
        return None
    sent = context.turns
    return max(max(context.dropped) + 1, sent[len(sent) // 2] if sent else 0)


# Approvals: the bookkeeping of agents that wait for a person's decision.


def decided(parked: ParkedAgent) -> bool:
    return all(pending.call_id in parked.decisions for pending in parked.pending)


def resumption_id(parked: ParkedAgent) -> str:
    """The transcript id of what the agent says when it goes on after approvals."""
    return f"{parked.turn_id}.resumed-{parked.resumed + 1}"


def parked_with(parked: Iterable[ParkedAgent], call_id: str) -> ParkedAgent | None:
    return next((p for p in parked if any(pending.call_id == call_id for pending in p.pending)), None)


def undecided(parked: Iterable[ParkedAgent]) -> list[PendingApproval]:
    """The calls still waiting for a decision, what the state and the Web UI show."""
    return [pending for p in parked for pending in p.pending if pending.call_id not in p.decisions]


def pending_approvals(calls: Iterable[AgentToolCall], turn_id: str, now: datetime) -> list[PendingApproval]:
    """The approvals an agent's step waits for, each expiring after its tool's approval timeout."""
    return [
        PendingApproval(
            call_id=call.call_id,
            turn_id=turn_id,
            name=call.name,
            arguments=call.arguments,
            approval=call.approval,
            requested_at=now,
            expires_at=now + timedelta(seconds=call.approval_timeout_seconds),
        )
        for call in calls
        if call.approval is not None
    ]


def time_out(parked: ParkedAgent, now: datetime) -> None:
    """Every call not decided in time counts as denied by the timeout."""
    for pending in parked.pending:
        parked.decisions.setdefault(
            pending.call_id,
            ApprovalDecision(
                approved=False, by="timeout", role="timeout", note="no one decided in time", at=now
            ),
        )


def parked_again(
    parked: ParkedAgent,
    steps: list[AgentStepRecord],
    waiting: AgentStepRecord,
    pending: list[PendingApproval],
) -> ParkedAgent:
    """The agent went on and asks for approvals again: it waits anew, from where it stopped."""
    return parked.model_copy(
        update={
            "steps": steps,
            "waiting": waiting,
            "pending": pending,
            "decisions": {},
            "resumed": parked.resumed + 1,
        }
    )


def decision_label(decision: ApprovalDecision) -> str:
    """How a call was decided, as the metric counts it."""
    if decision.role == "timeout":
        return "timeout"
    return "approved" if decision.approved else "denied"


def approved_calls(parked: ParkedAgent) -> list[AgentToolCall]:
    """The calls of the waiting step that a person approved: they run now."""
    return [
        call
        for call in parked.waiting.calls
        if (decision := parked.decisions.get(call.call_id)) is not None and decision.approved
    ]


def outcomes_after_decisions(
    parked: ParkedAgent, made: dict[str, AgentToolOutcome]
) -> list[AgentToolOutcome]:
    """The waiting step's outcomes, in its calls' order: a call that needed no approval ran before the agent
    waited; an approved one ran now (its decision attached); a denied one is an error for the model."""
    outcomes = []
    for call in parked.waiting.calls:
        decision = parked.decisions.get(call.call_id)
        if decision is None:
            outcomes.append(made[call.call_id])
        elif decision.approved:
            outcomes.append(made[call.call_id].model_copy(update={"approval": decision}))
        else:
            outcomes.append(denied(call, decision))
    return outcomes


def asking(pending: list[PendingApproval]) -> str:
    """The reply of a turn whose agent waits for approvals: what it wants to do, and who must say yes."""
    asks = []
    for call in pending:
        who = "your approval" if call.approval == "user" else "the approval of a member of our team"
        arguments = ", ".join(f"{name}: {value}" for name, value in sorted(call.arguments.items()))
        asks.append(f"{call.name} ({arguments}) needs {who}")
    return "Before I go on: " + "; ".join(asks) + "."


def denied(call: AgentToolCall, decision: ApprovalDecision) -> AgentToolOutcome:
    why = "no one decided in time" if decision.role == "timeout" else f"the {decision.role} said no"
    note = f" ({decision.note})" if decision.note and decision.role != "timeout" else ""
    return AgentToolOutcome(
        call_id=call.call_id,
        name=call.name,
        ok=False,
        error=f"not approved: {why}{note}; the call was not made",
        arguments_sha256=arguments_digest(call.arguments),
        approval=decision,
    )
