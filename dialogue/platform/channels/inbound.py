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

from dialogue.model.contracts import Button, ChannelAddress
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
    decision: Button | None = None
    """A press of an approval's button (`approve` or `deny`, on the call `value`): a decision, not a turn."""
    by: str = ""
    """Who on the platform sent it (their platform id), for a decision's lineage."""
    answer: bytes | None = None
    """What the webhook's response says back to the platform (Telegram: that the press was taken)."""


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
    if request.body.startswith(b"payload="):  # a press of one of our buttons (Slack's interactivity)
        return _slack_press(name, _json(dict(parse_qsl(request.body.decode())).get("payload", "").encode()))
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


def _slack_press(name: str, payload: dict[str, Any]) -> Inbound | None:
    """A `block_actions` payload: the button pressed under one of our messages, in its thread."""
    actions = payload.get("actions")
    if payload.get("type") != "block_actions" or not isinstance(actions, list) or not actions:
        return None  # a shortcut, a modal: nothing for the bot
    action = actions[0] if isinstance(actions[0], dict) else {}
    button = Button.pressed(str(action.get("value", "")), str((action.get("text") or {}).get("text", "")))
    container = payload.get("container") or {}
    message = payload.get("message") or {}
    channel = container.get("channel_id") or (payload.get("channel") or {}).get("id")
    at = action.get("action_ts")
    thread = container.get("thread_ts") or message.get("thread_ts") or container.get("message_ts")
    if button is None or not (isinstance(channel, str) and isinstance(at, str) and isinstance(thread, str)):
        return None  # not a button of ours (another app's message, a stale payload)
    # An Enterprise Grid org's interaction may have no team: the user's is the one the event named.
    team = (payload.get("team") or {}).get("id") or (payload.get("user") or {}).get("team_id", "")
    return _pressed(
        button,
        message_id=f"slack:{channel}:press:{at}",
        thread=f"slack-{team}-{channel}-{thread}",
        address=ChannelAddress(channel=name, platform="slack", to=channel, thread=thread),
        user=None,
        by=f"slack:{_safe(str((payload.get('user') or {}).get('id', '')))}",
    )


def _telegram(name: str, config: TelegramChannel, request: Request) -> Inbound | Handshake | None:
    token = request.headers.get("x-telegram-bot-api-secret-token", "")
    if not _same(token, config.secret_token.get_secret_value()):
        raise Refused("the Telegram secret token does not match")
    payload = _json(request.body)
    if isinstance(payload.get("callback_query"), dict):
        return _telegram_press(name, payload["callback_query"])
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


def _telegram_press(name: str, query: dict[str, Any]) -> Inbound | Handshake | None:
    """A `callback_query`: a button of our inline keyboard pressed. Answered in the webhook's response
    (`answerCallbackQuery`), which stops the button's spinner without another call."""
    message = query.get("message") or {}
    chat = message.get("chat") or {}
    chat_id, query_id = chat.get("id"), query.get("id")
    sender = (query.get("from") or {}).get("id")
    if not isinstance(query_id, str):
        return None
    answer = orjson.dumps({"method": "answerCallbackQuery", "callback_query_id": query_id})
    button = Button.pressed(str(query.get("data", "")))
    if button is None or not isinstance(chat_id, int):
        return Handshake(answer, "application/json")  # not ours: its spinner stops all the same
    private = chat.get("type") == "private" and isinstance(sender, int)
    return _pressed(
        button,
        message_id=f"telegram:{chat_id}:press:{query_id}",
        thread=f"telegram-{name}-{_hidden(str(chat_id))}",
        address=ChannelAddress(channel=name, platform="telegram", to=str(chat_id)),
        user=f"telegram:{sender}" if private else None,
        by=f"telegram:{sender}",
        answer=answer,
    )


def _pressed(
    button: Button,
    *,
    message_id: str,
    thread: str,
    address: ChannelAddress,
    user: str | None,
    by: str,
    answer: bytes | None = None,
) -> Inbound:
    """A press as what it does: `say` is the user's message (its value as their words), `approve` and
    `deny` a decision on the call the button is under."""
    decision = button if button.action != "say" else None
    text = button.value if decision is None else button.title
    return Inbound(message_id, thread, address, text, user, decision=decision, by=by, answer=answer)


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
                if message.get("type") not in ("text", "interactive"):
                    continue
                sender, message_id = message.get("from"), message.get("id")
                if not (isinstance(sender, str) and isinstance(message_id, str)):
                    raise Unreadable("a WhatsApp message without from or id")
                turn_id, thread = f"whatsapp:{message_id}", f"whatsapp-{name}-{_hidden(sender)}"
                address = ChannelAddress(channel=name, platform="whatsapp", to=sender)
                user = f"whatsapp:{_safe(sender)}"
                if message["type"] == "interactive":  # a reply button or a list row of ours, pressed
                    interactive = message.get("interactive") or {}
                    reply = interactive.get("button_reply") or interactive.get("list_reply") or {}
                    button = Button.pressed(str(reply.get("id", "")), str(reply.get("title", "")))
                    if button is None:
                        continue
                    return _pressed(
                        button, message_id=turn_id, thread=thread, address=address, user=user, by=user
                    )
                text = (message.get("text") or {}).get("body")
                if not isinstance(text, str):
                    raise Unreadable("a WhatsApp text message without its body")
                return Inbound(turn_id, thread, address, text, user)
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
