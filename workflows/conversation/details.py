"""What operators see of a conversation in the Temporal Web UI: its "Current details" and its search
attributes (the visibility store's columns, for listing and filtering conversations)."""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from dialogue.model.contracts import ConversationInput, ConversationState
    from dialogue.platform.temporal import DEGRADED_COUNT, HANDOFF, LAST_INTENT, STATUS, TENANT, TURN_COUNT


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


# Search attributes: each upsert is a command in the history, so each is written where its value changes.


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
