"""A platform's webhook request: its signature verified by the platform's own scheme, then read as a
user's message (or a handshake, or something to acknowledge and leave: the bot's own messages, edits,
delivery receipts).

Each platform signs differently:
- Slack: `X-Slack-Signature`, HMAC-SHA256 of `v0:{timestamp}:{body}` with the signing secret, refused
  when `X-Slack-Request-Timestamp` is more than five minutes off (`slack_sdk`'s own verifier);
- Telegram: `X-Telegram-Bot-Api-Secret-Token`, the secret given to `setWebhook`;
- WhatsApp Cloud API: `X-Hub-Signature-256`, HMAC-SHA256 of the body with the app's secret;
- Twilio: `X-Twilio-Signature`, HMAC-SHA1 of the URL and the sorted form fields with the auth token
  (`twilio`'s own validator).

A platform sends a message again when it is not acknowledged in time, and a replayed request is
signed as well as the first: the message's own id on the platform is what makes the turn once
(`Inbound.message_id` becomes the turn's id, which Temporal runs once).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import orjson
from slack_sdk.signature import SignatureVerifier
from twilio.request_validator import RequestValidator

from dialogue.model.contracts import ChannelAddress
from dialogue.platform.channels.config import (
    ChannelConfig,
    SlackChannel,
    TelegramChannel,
    TwilioChannel,
    WhatsAppChannel,
)

SLACK_WINDOW_SECONDS = 300
"""How old a Slack request may be (Slack's own advice): an older one is a replay, refused."""


class Refused(Exception):
    """The request is not the platform's (no or a wrong signature, a stale timestamp): 401."""


class NotInbound(Exception):
    """The channel sends messages and takes none (the integrator's own webhook): 404."""


class Unreadable(Exception):
    """Signed, but not a payload the platform documents: 400."""


@dataclass(frozen=True)
class Handshake:
    """The platform checks the webhook before using it: answer it with this."""

    body: bytes
    media_type: str = "text/plain"


@dataclass(frozen=True)
class Inbound:
    """A user's message on a platform."""

    message_id: str
    """The platform's id of the message, unique within the channel: the turn's id."""
    thread: str
    """What the conversation is on the platform (a Slack thread, a chat, a sender's number): conversations
    of the same thread follow one another (`ledger.current_conversation`)."""
    address: ChannelAddress
    text: str
    user: str | None
    """The end user the conversation is for, where the thread is one person's (a private chat, a phone);
    None where several people share it (a Slack thread, a group): the channel speaks for the tenant."""


@dataclass(frozen=True)
class Request:
    """What of the HTTP request the verifiers read."""

    url: str
    headers: dict[str, str]
    """Lower-cased names."""
    body: bytes


def read(name: str, config: ChannelConfig, request: Request) -> Inbound | Handshake | None:
    """The verified request's message; a handshake to answer; None: nothing for the bot (acknowledge it).
    Raises `Refused` when the request is not the platform's, `Unreadable` when its body is not a payload."""
    got: Inbound | Handshake | None
    if isinstance(config, SlackChannel):
        got = _slack(name, config, request)
    elif isinstance(config, TelegramChannel):
        got = _telegram(name, config, request)
    elif isinstance(config, WhatsAppChannel):
        got = _whatsapp(name, config, request)
    elif isinstance(config, TwilioChannel):
        got = _twilio(name, config, request)
    else:
        raise NotInbound("an integrator's webhook channel takes no messages: send turns over the API")
    if isinstance(got, Inbound) and not got.text.strip():
        return None  # a picture alone, say: no words to answer
    return got


def whatsapp_subscription(config: WhatsAppChannel, query: dict[str, str]) -> Handshake:
    """The webhook's subscription check (`GET ?hub.mode=subscribe&hub.verify_token=…&hub.challenge=…`)."""
    token = query.get("hub.verify_token", "")
    if query.get("hub.mode") != "subscribe" or not _same(token, config.verify_token.get_secret_value()):
        raise Refused("the verify token is not this channel's")
    return Handshake(query.get("hub.challenge", "").encode())


def _slack(name: str, config: SlackChannel, request: Request) -> Inbound | Handshake | None:
    timestamp = request.headers.get("x-slack-request-timestamp", "")
    signature = request.headers.get("x-slack-signature", "")
    if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > SLACK_WINDOW_SECONDS:
        raise Refused("the request's timestamp is missing or more than five minutes off")
    verifier = SignatureVerifier(config.signing_secret.get_secret_value())
    if not verifier.is_valid(request.body, timestamp, signature):
        raise Refused("the Slack signature does not match")
    payload = _json(request.body)
    if payload.get("type") == "url_verification":
        return Handshake(orjson.dumps({"challenge": payload.get("challenge", "")}), "application/json")
    event = payload.get("event")
    if payload.get("type") != "event_callback" or not isinstance(event, dict):
        return None
    # The bot's own messages come back as events too, and edits, joins and the like carry a subtype.
    if event.get("type") not in ("message", "app_mention") or event.get("subtype") or event.get("bot_id"):
        return None
    channel, ts, text = event.get("channel"), event.get("ts"), event.get("text")
    if not (isinstance(channel, str) and isinstance(ts, str) and isinstance(text, str)):
        raise Unreadable("a Slack message event without channel, ts or text")
    thread = str(event.get("thread_ts") or ts)
    return Inbound(
        # A message mentioning the app comes as `message` and `app_mention` both: one turn, by its ts.
        message_id=f"slack:{channel}:{ts}",
        thread=f"slack-{payload.get('team_id', '')}-{channel}-{thread}",
        address=ChannelAddress(channel=name, platform="slack", to=channel, thread=thread),
        text=text,
        user=None,
    )


def _telegram(name: str, config: TelegramChannel, request: Request) -> Inbound | None:
    token = request.headers.get("x-telegram-bot-api-secret-token", "")
    if not _same(token, config.secret_token.get_secret_value()):
        raise Refused("the Telegram secret token does not match")
    payload = _json(request.body)
    message = payload.get("message")
    if not isinstance(message, dict) or not isinstance(message.get("text"), str):
        return None  # an edit, a photo, a member joining: nothing to answer
    chat = message.get("chat") or {}
    chat_id, message_id = chat.get("id"), message.get("message_id")
    if not isinstance(chat_id, int) or not isinstance(message_id, int):
        raise Unreadable("a Telegram message without chat id or message id")
    sender = (message.get("from") or {}).get("id")
    private = chat.get("type") == "private" and isinstance(sender, int)
    return Inbound(
        message_id=f"telegram:{chat_id}:{message_id}",
        thread=f"telegram-{name}-{_hidden(str(chat_id))}",
        address=ChannelAddress(channel=name, platform="telegram", to=str(chat_id)),
        text=message["text"],
        user=f"telegram:{sender}" if private else None,
    )


def _whatsapp(name: str, config: WhatsAppChannel, request: Request) -> Inbound | None:
    signature = request.headers.get("x-hub-signature-256", "")
    expected = hmac.new(config.app_secret.get_secret_value().encode(), request.body, hashlib.sha256)
    if not _same(signature, "sha256=" + expected.hexdigest()):
        raise Refused("the WhatsApp signature (X-Hub-Signature-256) does not match")
    payload = _json(request.body)
    # One request may carry several messages; Meta sends one at a time in practice. The first text is taken,
    # and the others (statuses: sent, delivered, read) are acknowledged.
    for entry in payload.get("entry") or []:
        for change in entry.get("changes") or []:
            value = change.get("value") or {}
            for message in value.get("messages") or []:
                if message.get("type") != "text":
                    continue
                sender, message_id = message.get("from"), message.get("id")
                text = (message.get("text") or {}).get("body")
                if not (isinstance(sender, str) and isinstance(message_id, str) and isinstance(text, str)):
                    raise Unreadable("a WhatsApp message without from, id or text")
                return Inbound(
                    message_id=f"whatsapp:{message_id}",
                    thread=f"whatsapp-{name}-{_hidden(sender)}",
                    address=ChannelAddress(channel=name, platform="whatsapp", to=sender),
                    text=text,
                    user=f"whatsapp:{_safe(sender)}",
                )
    return None


def _twilio(name: str, config: TwilioChannel, request: Request) -> Inbound | None:
    fields = dict(parse_qsl(request.body.decode("utf-8", "replace"), keep_blank_values=True))
    validator = RequestValidator(config.auth_token.get_secret_value())
    url = config.webhook_url or request.url
    if not validator.validate(url, fields, request.headers.get("x-twilio-signature", "")):
        raise Refused("the Twilio signature (X-Twilio-Signature) does not match")
    sender, ours, sid = fields.get("From"), fields.get("To"), fields.get("MessageSid")
    if not (sender and ours and sid):
        return None  # a status callback, not a message
    return Inbound(
        message_id=f"twilio:{sid}",
        thread=f"sms-{name}-{_hidden(sender)}",
        address=ChannelAddress(channel=name, platform="twilio", to=sender, sender=ours),
        text=fields.get("Body", ""),
        user=f"sms:{_safe(sender)}",
    )


def _json(body: bytes) -> dict[str, Any]:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as err:
        raise Unreadable(f"the body is not JSON: {err}") from None
    if not isinstance(payload, dict):
        raise Unreadable("the body is not a JSON object")
    return payload


def _same(given: str, expected: str) -> bool:
    """In constant time: how much of a guess matched tells an attacker nothing."""
    return hmac.compare_digest(given.encode(), expected.encode())


def _hidden(number: str) -> str:
    """A phone number or chat id as a part of a conversation's id, which outlives an erasure (its tombstone)
    and names the conversation in logs and the Web UI: a digest, not the number."""
    return hashlib.sha256(number.encode()).hexdigest()[:20]


def _safe(part: str) -> str:
    """A platform's id as a part of a conversation or user id (letters, digits, `.`, `_`, `-`)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", part.lstrip("+")) or "_"
