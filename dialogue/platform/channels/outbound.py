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
TELEGRAM_CALLBACK_BYTES = 64
TELEGRAM_TEXT_CHARS = 4096
SLACK_SECTION_CHARS = 3000
SLACK_TEXT_BLOCKS = 40
SLACK_BUTTONS = 25
SLACK_VALUE_CHARS = 2000
WHATSAPP_BUTTONS = 3
WHATSAPP_ROWS = 10
WHATSAPP_INTERACTIVE_CHARS = 1024
WHATSAPP_TEXT_CHARS = 4096
"""The platforms' documented limits: a Telegram button's callback data, a message's text; a Slack
section's text, the blocks of a message (50, some kept for sources and buttons), the elements of an actions
block, a button's value; WhatsApp's reply buttons, a list's rows, an interactive message's body, a text
message's body."""


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
        text = _with_sources(delivery, TELEGRAM_TEXT_CHARS)
        message: dict[str, Any] = {"chat_id": delivery.address.to, "text": text}
        # An inline keyboard: a press comes back as a `callback_query` carrying the button's payload, which
        # Telegram caps at 64 bytes (a button whose payload is longer is left out; the text still asks).
        pressable = [b for b in delivery.buttons if len(b.payload.encode()) <= TELEGRAM_CALLBACK_BYTES]
        if pressable:
            rows = [pressable[i : i + 2] for i in range(0, len(pressable), 2)]
            keyboard = [[{"text": b.title, "callback_data": b.payload} for b in row] for row in rows]
            message["reply_markup"] = {"inline_keyboard": keyboard}
        response = await self._http.post(url, json=message)
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
                # The integrator's page shows them; a press is a turn (`say`) or a decision
                # (`POST /v1/conversations/{id}/approvals/{value}`) over the API.
                "buttons": [b.model_dump() for b in delivery.buttons],
                "sources": [{"title": s.title, "url": s.url} for s in delivery.sources],
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
                **_whatsapp_message(delivery),
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
            text=delivery.text,  # what notifications show; the blocks are what the thread shows
            blocks=_slack_blocks(delivery),
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


def _slack_blocks(delivery: Delivery) -> list[dict[str, Any]]:
    """The message as Block Kit: its text, the sources under it, and its buttons, whose presses Slack
    posts to the app's interactivity URL (the same `/v1/channels/{name}`) as `block_actions`."""
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": piece}}
        for piece in _pieces(_slack_escape(delivery.text) or " ", SLACK_SECTION_CHARS)
    ][:SLACK_TEXT_BLOCKS]
    if delivery.sources:
        named = [
            f"<{s.url}|{_slack_escape(s.title)}>" if s.url else _slack_escape(s.title)
            for s in delivery.sources
        ]
        said = _pieces("Sources: " + ", ".join(named), SLACK_SECTION_CHARS)[0]
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": said}]})
    # A button whose payload Slack would cut is left out: its press would hand back something else.
    pressable = [b for b in delivery.buttons if len(b.payload) <= SLACK_VALUE_CHARS][:SLACK_BUTTONS]
    if pressable:
        elements = []
        for index, button in enumerate(pressable):
            element: dict[str, Any] = {
                "type": "button",
                "action_id": f"dialogue-{index}",
                "text": {"type": "plain_text", "text": _cut(button.title, 75)},
                "value": button.payload,
            }
            if button.action != "say":
                element["style"] = "primary" if button.action == "approve" else "danger"
            elements.append(element)
        blocks.append({"type": "actions", "block_id": "dialogue-buttons", "elements": elements})
    return blocks


def _slack_escape(text: str) -> str:
    """Slack's mrkdwn reads `&`, `<` and `>` as its own: escaped, the text shows as written."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _pieces(escaped: str, limit: int) -> list[str]:
    """Escaped text in pieces of `limit` characters at most, none cutting an entity (`&amp;`) in two."""
    pieces = []
    while escaped:
        end = min(limit, len(escaped))
        entity = escaped.rfind("&", max(end - 4, 0), end)
        if end < len(escaped) and entity > 0 and ";" not in escaped[entity:end]:
            end = entity
        pieces.append(escaped[:end])
        escaped = escaped[end:]
    return pieces


def _whatsapp_message(delivery: Delivery) -> dict[str, Any]:
    """A text message; with buttons, an interactive one: up to 3 reply buttons, or a list of up to 10
    rows (their titles cut to WhatsApp's 20 and 24 characters). Buttons WhatsApp would refuse (titles
    the same once cut, a payload too long to hand back whole) make it a text message: the text asks."""
    text, buttons = _with_sources(delivery, WHATSAPP_INTERACTIVE_CHARS), delivery.buttons
    as_buttons = len(buttons) <= WHATSAPP_BUTTONS
    titles = [_cut(b.title, 20 if as_buttons else 24) for b in buttons]
    fits = all(len(b.payload) <= (256 if as_buttons else 200) for b in buttons)
    if (
        not buttons
        or len(buttons) > WHATSAPP_ROWS
        or len(text) > WHATSAPP_INTERACTIVE_CHARS
        or len(set(titles)) < len(titles)
        or not fits
    ):
        return {"type": "text", "text": {"body": _with_sources(delivery, WHATSAPP_TEXT_CHARS)}}
    if as_buttons:
        replies = [
            {"type": "reply", "reply": {"id": b.payload, "title": t}}
            for b, t in zip(buttons, titles, strict=True)
        ]
        action: dict[str, Any] = {"buttons": replies}
    else:
        rows = [{"id": b.payload, "title": t} for b, t in zip(buttons, titles, strict=True)]
        action = {"button": "Choose", "sections": [{"title": "Choose", "rows": rows}]}
    kind = "button" if as_buttons else "list"
    return {"type": "interactive", "interactive": {"type": kind, "body": {"text": text}, "action": action}}


def _with_sources(delivery: Delivery, limit: int) -> str:
    """The text with the documents it stands on named under it, for platforms with plain text only; the
    text alone where both would pass the platform's `limit`."""
    if not delivery.sources:
        return delivery.text
    named = ", ".join(f"{s.title} ({s.url})" if s.url else s.title for s in delivery.sources)
    with_sources = f"{delivery.text}\n\nSources: {named}"
    return with_sources if len(with_sources) <= limit else delivery.text


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


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
