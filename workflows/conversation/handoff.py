"""A person in the conversation: handing it over to a person and back, and a person's messages, each a
transcript entry in order with the turns."""

from __future__ import annotations

from temporalio import workflow

from workflows.conversation.outbox import Outbox
from workflows.conversation.recorder import Recorder
from workflows.conversation.state import Conversation

with workflow.unsafe.imports_passed_through():
    from dialogue.model.contracts import (
        AgentMessageReply,
        AgentMessageRequest,
        ConversationState,
        Holder,
    )


class Handoff:
    def __init__(self, conversation: Conversation, recorder: Recorder, outbox: Outbox) -> None:
        self._conversation = conversation
        self._recorder = recorder
        self._outbox = outbox

    async def hand_over(self, holder: Holder, agent: str | None, reason: str) -> ConversationState:
        state = self._conversation.state
        if state.held_by == holder:
            return state  # already there: handing over twice changes nothing
        state.held_by = holder
        state.handoff = holder == "agent"
        state.agent = agent if holder == "agent" else None
        who = agent or "a person"
        text = f"Handed off to {who} ({reason})." if holder == "agent" else f"{who} handed back to the bot."
        await self._recorder.record_message(
            self._conversation.take_index(),
            "system",
            text,
            agent,
            "handoff" if holder == "agent" else "handback",
        )
        return state

    async def post(self, request: AgentMessageRequest) -> AgentMessageReply:
        """A person's reply to the user, recorded in the transcript and sent to stream clients."""
        index = self._conversation.take_index()
        await self._recorder.record_message(
            index, "agent", request.text.strip(), request.agent, "agent_message"
        )
        self._outbox.send(f"agent_message-{index}", request.text.strip())
        return AgentMessageReply(
            conversation_id=self._conversation.input.conversation_id,
            turn_index=index,
            agent=request.agent,
            at=self._conversation.state.updated_at,
        )
