"""The rolling summary: older turns folded into a summary by the `summarize` activity, after the reply
and never in the user's way, when they no longer fit the LLM's context budget."""

from __future__ import annotations

import asyncio

from temporalio import workflow
from temporalio.exceptions import ActivityError, CancelledError

from workflows.conversation import decisions
from workflows.conversation.options import SUMMARIZE
from workflows.conversation.state import Conversation

with workflow.unsafe.imports_passed_through():
    from activities.summarize import SummarizeActivity
    from dialogue.model.contracts import ContextLineage, SummarizeRequest
    from dialogue.platform.flags import TurnFlags


class RollingSummary:
    def __init__(self, conversation: Conversation) -> None:
        self._conversation = conversation
        self._folding: asyncio.Future[None] | None = None

    @property
    def folding(self) -> bool:
        return self._folding is not None

    def fold_if_needed(self, context: ContextLineage | None, flags: TurnFlags) -> None:
        """Start folding when the answer's context dropped turns (one fold at a time)."""
        through = decisions.fold_through(context)
        if through is not None and self._folding is None:
            self._folding = asyncio.ensure_future(self._fold(through, flags))

    async def _fold(self, through: int, flags: TurnFlags) -> None:
        """Fold the turns before `through` into the rolling summary; a failure keeps the old one."""
        state = self._conversation.state
        try:
            summary = await workflow.execute_activity_method(
                SummarizeActivity.summarize,
                SummarizeRequest(
                    conversation_id=self._conversation.input.key,
                    previous=state.rolling_summary,
                    through=through,
                    variant=flags.llm_variant,
                    redact=flags.redaction,
                ),
                **SUMMARIZE,
            )
            current = state.rolling_summary
            if current is None or summary.through > current.through:
                state.rolling_summary = summary
            state.summary_failed = False
        except ActivityError as err:
            if isinstance(err.cause, CancelledError):
                raise
            workflow.logger.warning("summary failed, older turns are left out: %s", err.cause or err)
            state.summary_failed = True
        finally:
            self._folding = None
