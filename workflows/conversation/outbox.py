"""The conversation's messages to its messaging platform (`ConversationInput.channel`): a turn's reply, a
person's message, an agent's reply once its approvals are decided, a reminder. Each is a `deliver`
activity (tried first inline, as a local activity), one at a time, in the order they were made: a platform
that is down delays them (retried with backoff), never reorders them, and never holds up a turn. The run
ends, or continues as new, once all are delivered."""

from __future__ import annotations

import asyncio

from temporalio import workflow
from temporalio.exceptions import ActivityError, CancelledError, FailureError

from workflows.conversation import patches
from workflows.conversation.options import DELIVER, DELIVER_INLINE
from workflows.conversation.state import Conversation

with workflow.unsafe.imports_passed_through():
    from activities.deliver import DeliveryActivities
    from dialogue.model.contracts import Button, Delivery, Source


class Outbox:
    def __init__(self, conversation: Conversation) -> None:
        self._conversation = conversation
        self.waiting: list[Delivery] = []
        """Made and not yet delivered, oldest first."""
        self._sending: asyncio.Future[None] | None = None

    def send(
        self, event: str, text: str, buttons: list[Button] | None = None, sources: list[Source] | None = None
    ) -> None:
        """Deliver `text` to the conversation's channel, after what was sent before, with `buttons` to tap
        and the `sources` it stands on; `event` names what it carries (a turn's id, a message's): the same
        event is delivered once. Nothing without a channel."""
        conversation = self._conversation
        address = conversation.input.channel
        # Asked only in a conversation held on a channel: no other run records the marker.
        if address is None or not text or not workflow.patched(patches.CHANNEL_DELIVERY):
            return
        self.waiting.append(
            Delivery(
                id=f"{conversation.input.key}/{event}",
                conversation_id=conversation.input.key,
                address=address,
                text=text,
                buttons=buttons or [],
                sources=sources or [],
            )
        )
        if self._sending is None:
            self._sending = asyncio.ensure_future(self._deliver_in_order())

    def delivered(self) -> bool:
        """Nothing is waiting. An outbox that died of a bug raises here: the workflow task fails and is
        retried (by a fixed worker) instead of the conversation waiting for ever."""
        if self._sending is not None and self._sending.done() and not self._sending.cancelled():
            self._sending.result()
        return not self.waiting

    async def _deliver_in_order(self) -> None:
        while True:
            await workflow.wait_condition(lambda: bool(self.waiting))
            delivery = self.waiting[0]
            try:
                outcome = await workflow.execute_local_activity_method(
                    DeliveryActivities.deliver, delivery, **DELIVER_INLINE
                )
            except FailureError as err:  # a local activity's failure may come as its cause itself
                cause = err.cause if isinstance(err, ActivityError) else err
                if isinstance(cause, CancelledError):
                    raise asyncio.CancelledError from err
                # Retried without limit by Temporal: the activity itself gives up (a dead letter) after its
                # attempts, so this never fails the workflow.
                outcome = await workflow.execute_activity_method(
                    DeliveryActivities.deliver, delivery, **DELIVER
                )
            if outcome.status == "dead":
                workflow.logger.warning("delivery %s is a dead letter", delivery.id)
            self.waiting.pop(0)
