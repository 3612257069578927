"""The model's notes for the end user's memory: after a turn a model answered for a user who consents
(the answer's context says so), the `note_memory` activity has the model read the user's message for
facts to keep. After the reply and never in the user's way; one reading at a time, in turn order."""

from __future__ import annotations

import asyncio

from temporalio import workflow
from temporalio.exceptions import ActivityError, CancelledError

from workflows.conversation import patches
from workflows.conversation.options import NOTE_MEMORY
from workflows.conversation.state import Conversation

with workflow.unsafe.imports_passed_through():
    from activities.memory_notes import MemoryNotesActivity
    from dialogue.model.contracts import NoteMemoryRequest, Reply
    from dialogue.platform.flags import TurnFlags


class MemoryNotes:
    def __init__(self, conversation: Conversation) -> None:
        self._conversation = conversation
        self._noting: asyncio.Future[None] | None = None

    @property
    def noting(self) -> bool:
        return self._noting is not None

    def note_if_due(self, turn_id: str, text: str, reply: Reply, flags: TurnFlags) -> None:
        """Start the model's reading of this turn when its answer says the user consents."""
        user = self._conversation.input.user
        if user is None or reply.context is None or not reply.context.memory_notes:
            return
        if not workflow.patched(patches.MODEL_MEMORY_NOTES):
            return  # a run recorded before the patch: it took no notes
        request = NoteMemoryRequest(
            conversation_id=self._conversation.input.key,
            turn_id=turn_id,
            user=user,
            user_text=text,
            variant=flags.llm_variant,
            redact=flags.redaction,
        )
        noting = asyncio.ensure_future(self._note(self._noting, request))
        noting.add_done_callback(self._done)
        self._noting = noting

    def _done(self, noting: asyncio.Future[None]) -> None:
        if self._noting is noting:  # the last reading asked for is done: nothing is being noted
            self._noting = None

    async def _note(self, before: asyncio.Future[None] | None, request: NoteMemoryRequest) -> None:
        """After the reading before it (a later fact corrects an earlier one); a failure notes nothing."""
        if before is not None:
            await asyncio.shield(before)
        try:
            await workflow.execute_activity_method(MemoryNotesActivity.note_memory, request, **NOTE_MEMORY)
        except ActivityError as err:
            if isinstance(err.cause, CancelledError):
                raise
            workflow.logger.warning("the turn's memory notes failed: %s", err.cause or err)
