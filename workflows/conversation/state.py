"""`Conversation`: a conversation's input and live state, shared by the workflow's roles, with what every
role does to them (take a place in the transcript, show the Web UI's details, bound a step by the turn's
deadline, end the conversation)."""

from __future__ import annotations

from typing import Any

from temporalio import workflow

from workflows.conversation import details, patches
from workflows.conversation.options import within_deadline

with workflow.unsafe.imports_passed_through():
    from dialogue.model.contracts import ConversationInput, ConversationState, TurnReply


class Conversation:
    def __init__(self, input: ConversationInput) -> None:
        now = workflow.now()
        self.input = input
        # One patch marker for the commands of today's code instead of one per change (each marker also
        # writes a search attribute, TemporalChangeVersion): a run recorded before it takes the patches one
        # by one, as it did (`patched`).
        self.lean_commands = workflow.patched(patches.LEAN_COMMANDS)
        self.listing = details.Listing(lean=self.lean_commands)
        self.recent: dict[str, TurnReply] = {}
        """The latest replies by turn id (`RECENT_TURNS`): a turn retried gets its reply, not a second turn."""
        if input.carried is not None:
            self.state = input.carried.state.model_copy(update={"run": input.carried.state.run + 1})
            self.recent = {reply.turn_id: reply for reply in input.carried.recent_turns}
        else:
            self.state = ConversationState(
                conversation_id=input.conversation_id,
                started_at=now,
                updated_at=now,
                slots=dict(input.slots),
                user=input.user,
                trusted_slots=[name for name in input.trusted_slots if name in input.slots],
                bot=input.bot,
                bot_version=input.bot_version,
            )

    def patched(self, patch: str) -> bool:
        """`workflow.patched(patch)` for a run recorded before the lean-commands patch; true since."""
        return self.lean_commands or workflow.patched(patch)

    @property
    def active(self) -> bool:
        return self.state.status == "active"

    @property
    def bot_ref(self) -> str | None:
        """`bot@version` of the bot that answers, as the worker's activities are told it (a header:
        `dialogue.platform.bot_header`); None: the worker's own bot."""
        if self.state.bot is None or self.state.bot_version is None:
            return None
        return f"{self.state.bot}@{self.state.bot_version}"

    def move_bot(self, versions: dict[str, str]) -> None:
        """Move to the version a release with `move_running` gives this conversation now (an urgent fix);
        a conversation of another bot, or of none, stays as it is."""
        moved = versions.get(self.state.bot) if self.state.bot is not None else None
        if moved is not None and moved != self.state.bot_version:
            self.state.bot_version = moved
            self.show()

    def last_reply(self) -> TurnReply | None:
        return next(reversed(self.recent.values()), None)

    def previous_query(self) -> str | None:
        """The question the previous turn searched with, when it was answered from the knowledge base."""
        return self.state.last_query if self.state.last_action == "answer" else None

    def take_index(self) -> int:
        """The next place in the transcript: user turns, a person's messages and handoffs share one order."""
        index = self.state.turn_count
        self.state.turn_count = index + 1
        self.state.updated_at = workflow.now()
        return index

    def show(self) -> None:
        """The Web UI's "Current details" follow the state."""
        details.show(self.state)

    def within_deadline(self, options: dict[str, Any]) -> dict[str, Any]:
        return within_deadline(options, self.input.turn_deadline_seconds)

    def close(self, reason: str) -> None:
        if self.state.status == "ended":
            return  # the first reason stands
        self.state.status = "ended"
        self.state.ended_reason = reason
        self.state.updated_at = workflow.now()
        self.show()
        self.listing.ended(self.state)
