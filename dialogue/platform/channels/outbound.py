"""A message sent to a conversation's platform, through the platform's API: Slack's `chat.postMessage`
(`slack_sdk`), Twilio's Messages resource (`twilio`), and for Telegram's Bot API and WhatsApp's Cloud API,
which have no official Python SDK, their documented HTTP calls; or to the integrator's own webhook, signed.

The SDKs' own retries are off: the `deliver` activity's retry policy is the one that retries, with
backoff, and a platform's rate limit (429 and its `Retry-After`) sets the next attempt's delay. What the
platform refuses for good (a bad token, an unknown chat) is `Undeliverable`: retrying cannot help.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any

import httpx
import orjson
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client as TwilioClient

from dialogue.model.contracts import Delivery
from dialogue.platform.channels.config import (
    ChannelConfig,
    SlackChannel,
    TelegramChannel,
    TwilioChannel,
    WebhookChannel,
    WhatsAppChannel,
)

SEND_TIMEOUT_SECONDS = 10.0


class Undeliverable(Exception):
    """The platform refused the message for good (a 4xx other than a rate limit)."""


class Throttled(Exception):
    """The platform asks to wait (a rate limit, or it is down for now): retry after `retry_after` seconds,
    or with the activity's backoff when it did not say."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


SLACK_TRANSIENT = {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}


class Senders:
    """Sends deliveries, one HTTP connection pool shared by the calls made without an SDK (it lives as
    long as the worker)."""

    def __init__(self) -> None:
        self._http = httpx.AsyncClient(timeout=SEND_TIMEOUT_SECONDS)

    async def send(self, config: ChannelConfig, delivery: Delivery) -> str:
        """The message sent; the platform's id of it."""
        if isinstance(config, SlackChannel):
            return await _slack(config, delivery)
        if isinstance(config, TelegramChannel):
            return await self._telegram(config, delivery)
        if isinstance(config, WhatsAppChannel):
            return await self._whatsapp(config, delivery)
        if isinstance(config, TwilioChannel):
            return await _twilio(config, delivery)
        return await self._webhook(config, delivery)

    async def _telegram(self, config: TelegramChannel, delivery: Delivery) -> str:
        url = f"{config.api_url.rstrip('/')}/bot{config.bot_token.get_secret_value()}/sendMessage"
        response = await self._http.post(url, json={"chat_id": delivery.address.to, "text": delivery.text})
        body = _json(response)
        _raise_for(response, body.get("description"), (body.get("parameters") or {}).get("retry_after"))
        return str((body.get("result") or {}).get("message_id", ""))

    async def _webhook(self, config: WebhookChannel, delivery: Delivery) -> str:
        """The integrator's endpoint: the message as JSON, signed, its delivery id as the idempotency key
        (the one way a receiver drops the copy a worker's death between its answer and the ledger's mark
        would send)."""
        body = orjson.dumps(
            {
                "id": delivery.id,
                "conversation_id": delivery.conversation_id.split("/", 1)[-1],
                "text": delivery.text,
            }
        )
        timestamp = str(int(time.time()))
        signature = webhook_signature(config.secret.get_secret_value(), timestamp, body)
        response = await self._http.post(
            config.url,
            content=body,
            headers={
                "Content-Type": "application/json",
                "Idempotency-Key": delivery.id,
                "X-Dialogue-Timestamp": timestamp,
                "X-Dialogue-Signature": signature,
            },
        )
        _raise_for(response, None, None)
        return delivery.id

    async def _whatsapp(self, config: WhatsAppChannel, delivery: Delivery) -> str:
        response = await self._http.post(
            f"{config.api_url.rstrip('/')}/{config.phone_number_id}/messages",
            headers={"Authorization": f"Bearer {config.access_token.get_secret_value()}"},
            json={
                "messaging_product": "whatsapp",
                "recipient_type": "individual",
                "to": delivery.address.to,
                "type": "text",
                "text": {"body": delivery.text},
            },
        )
        body = _json(response)
        _raise_for(response, (body.get("error") or {}).get("message"), None)
        return str(((body.get("messages") or [{}])[0]).get("id", ""))


async def _slack(config: SlackChannel, delivery: Delivery) -> str:
    client = AsyncWebClient(
        token=config.bot_token.get_secret_value(),
        base_url=config.api_url,
        timeout=int(SEND_TIMEOUT_SECONDS),
        retry_handlers=[],
    )
    try:
        response = await client.chat_postMessage(
            channel=delivery.address.to,
            thread_ts=delivery.address.thread,
            text=delivery.text,
            # The delivery's id rides with the message: an operator (or a later reconciliation) can tell
            # which delivery a message in the thread is.
            metadata={"event_type": "dialogue_delivery", "event_payload": {"id": delivery.id}},
        )
    except SlackApiError as err:
        status = err.response.status_code
        error = str(err.response.get("error", "")) if isinstance(err.response.data, dict) else ""
        if status == 429 or status >= 500 or error in SLACK_TRANSIENT:
            retry_after = err.response.headers.get("Retry-After") or err.response.headers.get("retry-after")
            raise Throttled(f"Slack: {status} {error}", _seconds(retry_after)) from None
        raise Undeliverable(f"Slack refused the message: {error or status}") from None
    return str(response.get("ts", ""))


async def _twilio(config: TwilioChannel, delivery: Delivery) -> str:
    http = AsyncTwilioHttpClient(timeout=SEND_TIMEOUT_SECONDS)
    client = TwilioClient(config.account_sid, config.auth_token.get_secret_value(), http_client=http)
    client.api.base_url = config.api_url.rstrip("/")
    try:
        message = await client.messages.create_async(
            to=delivery.address.to, from_=delivery.address.sender, body=delivery.text
        )
    except TwilioRestException as err:
        if err.status == 429 or err.status >= 500:
            raise Throttled(f"Twilio: {err.status} {err.msg}") from None
        raise Undeliverable(f"Twilio refused the message: {err.status} {err.msg}") from None
    finally:
        await http.close()
    return str(message.sid)


def webhook_signature(secret: str, timestamp: str, body: bytes) -> str:
    """`X-Dialogue-Signature` of a body sent to an integrator's webhook: what its receiver recomputes."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _raise_for(response: httpx.Response, description: object, retry_after: object) -> None:
    status = response.status_code
    if status < 300:
        return
    what = f"{status} {description or response.reason_phrase}"
    if status == 429 or status >= 500:
        raise Throttled(what, _seconds(retry_after or response.headers.get("retry-after")))
    raise Undeliverable(what)


def _seconds(value: object) -> float | None:
    try:
        return float(str(value)) if value is not None else None
    except ValueError:
        return None
