"""`ResendWorkflow`: an operator's resend of a dead letter (`POST /v1/deliveries/{id}/resend`), delivered
by the same activity, with the same retries, as the conversation's own deliveries; its conversation may
have ended since."""

from __future__ import annotations

from temporalio import workflow

from workflows.conversation.options import DELIVER

with workflow.unsafe.imports_passed_through():
    from activities.deliver import DeliveryActivities
    from dialogue.model.contracts import Delivered, Delivery


@workflow.defn
class ResendWorkflow:
    @workflow.run
    async def run(self, delivery: Delivery) -> Delivered:
        return await workflow.execute_activity_method(DeliveryActivities.deliver, delivery, **DELIVER)
