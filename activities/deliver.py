"""`deliver`: a message of a conversation sent to its messaging platform, once.

The workflow runs one delivery at a time per conversation, in order, and Temporal retries an attempt that
fails, with backoff (`workflows.conversation.options.DELIVER`). The ledger (`channel_delivery`) makes the
retries safe: a delivery the platform took is marked `sent` before the activity reports it, so an attempt
run again after a worker died (its result never reached Temporal) finds it sent and sends nothing. The
one window left is between the platform taking the message and the ledger's write, a few milliseconds:
a worker killed inside it sends that message twice, as no platform here takes an idempotency key.

A delivery the platform refuses for good (a bad token, an unknown chat), or still failing after
DELIVERY_ATTEMPTS, is a dead letter: kept in the ledger for an operator to see and resend
(`GET /v1/deliveries`), and the conversation goes on with its next message.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from sqlalchemy.engine import Engine
from temporalio import activity
from temporalio.exceptions import ApplicationError

from dialogue.model.contracts import Delivered, Delivery
from dialogue.platform.channels import ledger
from dialogue.platform.channels.config import ChannelConfig
from dialogue.platform.channels.outbound import Senders, Throttled, Undeliverable

DELIVERY_ATTEMPTS = 20
"""Attempts before a delivery is a dead letter: with the backoff to one a minute, about 15 minutes of a
platform being down."""


class DeliveryActivities:
    def __init__(self, engine: Engine, channels: dict[str, ChannelConfig]) -> None:
        self._engine = engine
        self._channels = channels
        self._senders = Senders()

    @activity.defn(name="deliver")
    async def deliver(self, delivery: Delivery) -> Delivered:
        tenant = delivery.conversation_id.split("/", 1)[0]
        row = await asyncio.to_thread(ledger.begin, self._engine, delivery, tenant)
        if row.status == "sent":
            return Delivered(status="sent", platform_id=row.platform_id)  # an attempt before this one sent it
        config = self._channels.get(delivery.address.channel)
        try:
            if config is None:
                raise Undeliverable(f"no channel {delivery.address.channel!r} is configured here")
            platform_id = await self._senders.send(config, delivery)
        except Undeliverable as err:
            return await self._dead(delivery, str(err))
        except Exception as err:
            error = f"{err.__class__.__name__}: {err}"
            if activity.info().attempt >= DELIVERY_ATTEMPTS:
                return await self._dead(delivery, error)
            await asyncio.to_thread(ledger.finish, self._engine, delivery.id, "sending", error=error)
            retry_after = err.retry_after if isinstance(err, Throttled) else None
            raise ApplicationError(
                f"delivery {delivery.id} not taken yet: {error}",
                type="DeliveryRetry",
                next_retry_delay=timedelta(seconds=retry_after) if retry_after else None,
            ) from err
        await asyncio.to_thread(ledger.finish, self._engine, delivery.id, "sent", platform_id=platform_id)
        return Delivered(status="sent", platform_id=platform_id)

    async def _dead(self, delivery: Delivery, error: str) -> Delivered:
        activity.logger.error("delivery %s is a dead letter: %s", delivery.id, error)
        await asyncio.to_thread(ledger.finish, self._engine, delivery.id, "dead", error=error)
        return Delivered(status="dead")
