"""What operators see of a conversation in the Temporal Web UI: its "Current details" and its search
attributes (the visibility store's columns, for listing and filtering conversations)."""

from __future__ import annotations

from typing import Any

from temporalio import workflow
from temporalio.common import SearchAttributeKey

with workflow.unsafe.imports_passed_through():
    from dialogue.model.contracts import ConversationInput, ConversationState
    from dialogue.platform.temporal import (
        AWAITS,
        DEGRADED_COUNT,
        HANDOFF,
        LAST_INTENT,
        STATUS,
        TENANT,
        TURN_COUNT,
    )


def details(state: ConversationState) -> str:
    """The summary the Web UI shows under "Current details"."""
    lines = [
        f"**{state.status}** · {state.turn_count} turns · last intent `{state.last_intent}`",
        f"flow: `{state.active_flow}` (asking for `{state.requested_slot}`)"
        if state.active_flow
        else "flow: none",
    ]
    if state.bot is not None:
        lines.append(f"bot `{state.bot}@{state.bot_version}`")
    if state.slots:
        lines.append("slots: " + ", ".join(f"`{k}`={v}" for k, v in sorted(state.slots.items())))
    if state.degraded_count:
        lines.append(f"{state.degraded_count} degraded turns (see each turn's lineage for why)")
    if state.held_by == "agent":
        lines.append(f"handed off to {state.agent or 'a person'}: the bot is paused")
    if state.rolling_summary is not None:
        summary = state.rolling_summary
        lines.append(f"summary v{summary.version} of turns before {summary.through} ({summary.generator})")
    if state.pending_approvals:
        asked = ", ".join(f"`{p.name}` ({p.approval}, `{p.call_id}`)" for p in state.pending_approvals)
        lines.append(f"waiting for approval: {asked}")
    if state.unrecorded:
        lines.append(f"{state.unrecorded} messages wait for the store (retried until it takes them)")
    if state.run > 1:
        lines.append(f"run {state.run} (continued as new); {state.summary}")
    return "\n\n".join(lines)


def show(state: ConversationState) -> None:
    workflow.set_current_details(details(state))


# Search attributes: each upsert is a command in the history and a write to the visibility store (about as
# much of the dev server's CPU as a bare update, bench/command_costs.py), so each is written where its
# value changes.


class Listing:
    """What the visibility store lists of a conversation (its search attributes), written by the run.

    Before the lean-commands patch every turn wrote its intent and count, and a run wrote its status, tenant,
    degraded count and handoff when it started. Since, the conversation is listed from its start (the
    client sets the attributes with the workflow, `dialogue.platform.starting.listed_at_start`) and an
    attribute is written only when the value operators filter on changes: status, handoff, degraded count.
    The last intent and turn count, which change every turn, go with those writes, with the first turn
    (a new conversation is listed with its topic), and when the run ends or continues as new; in between,
    the state query has them live.
    """

    def __init__(self, *, lean: bool) -> None:
        self._lean = lean
        self._published: dict[str, object] = {}
        self._wanted: dict[str, tuple[SearchAttributeKey[Any], Any, bool]] = {}
        """Changed values by attribute name, with whether the change is written at once."""
        listed = workflow.info().typed_search_attributes
        if lean:
            for key in (STATUS, TENANT, DEGRADED_COUNT, HANDOFF, LAST_INTENT, TURN_COUNT):
                value = listed.get(key)
                if value is not None:
                    self._published[key.name] = value
        self._awaits = sorted(listed.get(AWAITS) or [])
        """As listed now: a run continued as new has its predecessor's."""

    def start(self, input: ConversationInput, state: ConversationState) -> None:
        if not self._lean:
            publish_start(input, state)
            return
        self._want(STATUS, state.status)
        self._want(TENANT, input.tenant)
        self._want(DEGRADED_COUNT, state.degraded_count)
        self._want(HANDOFF, state.held_by == "agent")
        self._publish()

    def turn(self, state: ConversationState, topic: str) -> None:
        if not self._lean:
            publish_turn(state, topic)
            return
        first = LAST_INTENT.name not in self._published
        self._want(LAST_INTENT, topic, now=first)
        self._want(TURN_COUNT, state.turn_count, now=first)
        self._want(DEGRADED_COUNT, state.degraded_count)
        self._publish()

    def message(self, state: ConversationState) -> None:
        """A person's message, a handoff or a handback."""
        if not self._lean:
            publish_message(state)
            return
        self._want(TURN_COUNT, state.turn_count, now=False)
        self._want(HANDOFF, state.held_by == "agent")
        self._publish()

    def ended(self, state: ConversationState) -> None:
        if not self._lean:
            publish_ended()
            return
        self._want(STATUS, "ended")
        self._want(TURN_COUNT, state.turn_count)
        self._publish()

    def run_ends(self, state: ConversationState) -> None:
        """Before the run continues as new: what waited for a write is written."""
        if self._lean:
            self._want(TURN_COUNT, state.turn_count)
            self._publish()

    def awaits(self, events: list[str]) -> None:
        """The events the conversation's reminders wait for, written when they change (never in a
        conversation without such a reminder: its histories are as they were)."""
        if events == self._awaits:
            return
        workflow.upsert_search_attributes([AWAITS.value_set(events) if events else AWAITS.value_unset()])
        self._awaits = list(events)

    def _want(self, key: SearchAttributeKey[Any], value: object, *, now: bool = True) -> None:
        """`now`: the value changed and is written with this step; otherwise it waits for the next write."""
        if self._published.get(key.name) == value:
            self._wanted.pop(key.name, None)
            return
        self._wanted[key.name] = (key, value, now)

    def _publish(self) -> None:
        if not any(now for _, _, now in self._wanted.values()):
            return
        updates = [key.value_set(value) for key, value, _ in self._wanted.values()]
        workflow.upsert_search_attributes(updates)
        self._published.update({name: value for name, (_, value, _) in self._wanted.items()})
        self._wanted.clear()


# Before the lean-commands patch: the attributes a run wrote at each step.


def publish_start(input: ConversationInput, state: ConversationState) -> None:
    workflow.upsert_search_attributes(
        [
            STATUS.value_set("active"),
            TENANT.value_set(input.tenant),
            DEGRADED_COUNT.value_set(state.degraded_count),
            HANDOFF.value_set(state.held_by == "agent"),
        ]
    )


def publish_turn(state: ConversationState, topic: str) -> None:
    workflow.upsert_search_attributes(
        [
            LAST_INTENT.value_set(topic),
            TURN_COUNT.value_set(state.turn_count),
            DEGRADED_COUNT.value_set(state.degraded_count),
        ]
    )


def publish_message(state: ConversationState) -> None:
    workflow.upsert_search_attributes(
        [TURN_COUNT.value_set(state.turn_count), HANDOFF.value_set(state.held_by == "agent")]
    )


def publish_ended() -> None:
    workflow.upsert_search_attributes([STATUS.value_set("ended")])
