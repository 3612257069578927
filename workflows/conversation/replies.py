"""One way to answer: every answer of the conversation (a turn's, an agent's going on after approvals, a
turn the bot did not answer) gets its reply, its lineage and its transcript record from `Answer`."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from temporalio import workflow

from workflows.conversation.step_log import StepLog

with workflow.unsafe.imports_passed_through():
    from dialogue.model.contracts import (
        AgentStepRecord,
        IntentPrediction,
        Lineage,
        ModelCall,
        NluResult,
        PendingApproval,
        RecordTurnRequest,
        Reply,
        TurnReply,
    )

FALLBACK_TEXT = "Sorry, I can't answer that right now. Please try again in a moment."
NOT_RUN = "none"
"""The intent of a turn the bot did not run: interrupted, or answered by a person."""


@dataclass
class Answer:
    """What the bot said, and everything its lineage names: the NLU, the documents, the retrieval query,
    the agent's steps, the flags, each step's time and why it was degraded."""

    conversation_id: str
    key: str
    turn_id: str
    turn_index: int
    user_text: str
    reply: Reply
    nlu: NluResult
    log: StepLog = field(default_factory=StepLog)
    flags: dict[str, bool] = field(default_factory=dict)
    action: str | None = None
    query: str | None = None
    agent: list[AgentStepRecord] | None = None
    agent_answer: ModelCall | None = None
    approvals: list[PendingApproval] = field(default_factory=list)
    resumes: str | None = None
    """For an agent going on after approvals: the turn that asked for them."""
    bot: str | None = None
    bot_version: str | None = None
    """The bot and the version that answered (the conversation's, `ConversationState.bot_version`)."""
    user: str | None = None
    """The conversation's end user (`RecordTurnRequest.user`)."""
    lineage: Lineage | None = None
    answered: bool = True
    """False for a turn the bot did not answer (interrupted, or a person holds the conversation): its
    transcript entry has the user's words and no reply."""

    @property
    def degraded(self) -> bool:
        return bool(self.log.failed)

    def trace(self, total_ms: float) -> None:
        """Make the lineage, the reply ready (`total_ms`: until then); the model's context moves from the
        reply into the lineage: once in history is enough."""
        self.adopt(
            Lineage.of_reply(
                self.reply,
                self.nlu,
                timings_ms=dict(self.log.timings) | {"total": total_ms},
                degraded_reason=self.log.degraded_reason,
                flags=self.flags,
                query=self.query,
                action=self.action,
                bot=self.bot,
                bot_version=self.bot_version,
                agent=self.agent,
                agent_answer=self.agent_answer,
            )
        )

    def adopt(self, lineage: Lineage) -> None:
        """Take `lineage` as the answer's: made by `trace`, or by `respond_here`, which wrote it with the turn."""
        self.lineage = lineage
        self.reply = self.reply.model_copy(update={"context": None})

    def record(self, at: datetime) -> RecordTurnRequest:
        """The transcript's entry for this answer."""
        return RecordTurnRequest(
            conversation_id=self.key,
            turn_id=self.turn_id,
            turn_index=self.turn_index,
            user_text=self.user_text,
            reply=self.reply if self.answered else None,
            nlu=self.nlu,
            degraded=self.degraded,
            at=at,
            lineage=self.lineage,
            resumes=self.resumes,
            user=self.user,
        )

    def turn_reply(self, held_by: str, *, interrupted: bool = False) -> TurnReply:
        """What the caller gets back."""
        return TurnReply(
            conversation_id=self.conversation_id,
            turn_id=self.turn_id,
            turn_index=self.turn_index,
            reply=self.reply,
            nlu=self.nlu,
            degraded=self.degraded,
            degraded_reason=self.log.degraded_reason,
            timings_ms=self.log.timings,
            lineage=self.lineage,
            interrupted=interrupted,
            held_by=held_by,
            user_text=self.user_text,
            approvals=self.approvals,
            resumes=self.resumes,
        )


def unanswered(
    conversation_id: str, key: str, turn_id: str, turn_index: int, user_text: str, *, user: str | None = None
) -> Answer:
    """A turn the bot does not answer: recorded all the same, with the user's words."""
    return Answer(
        user=user,
        conversation_id=conversation_id,
        key=key,
        turn_id=turn_id,
        turn_index=turn_index,
        user_text=user_text,
        reply=Reply(text="", generator=NOT_RUN),
        nlu=NluResult(intent=IntentPrediction(name=NOT_RUN, confidence=0.0)),
        answered=False,
    )
