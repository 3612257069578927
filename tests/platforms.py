"""Stand-ins for the messaging platforms, over real HTTP, speaking each one's documented wire format, and
the signed webhook requests each platform sends.

The stand-in takes what the bot sends: Slack's `chat.postMessage` (JSON, bearer token), Telegram's
`sendMessage` (JSON, the token in the path), WhatsApp Cloud API's `/{phone_number_id}/messages` (JSON,
bearer token) and Twilio's `Messages.json` (form, basic auth). It keeps every message it took, in order,
and can be told to be down (503) or to refuse for good (403).

The webhook requests are the platforms' documented sample payloads, signed as each platform signs them.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from twilio.request_validator import RequestValidator

from dialogue.platform.channels.outbound import webhook_signature

SLACK_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
SLACK_TOKEN = "xoxb-test-token"
TELEGRAM_SECRET = "telegram-webhook-secret"
TELEGRAM_TOKEN = "123456:ABC-DEF1234ghIkl-zyx57W2v1u123ew11"
WHATSAPP_SECRET = "whatsapp-app-secret"
WHATSAPP_TOKEN = "whatsapp-access-token"
WHATSAPP_VERIFY = "whatsapp-verify-token"
WHATSAPP_PHONE_ID = "106540352242922"
TWILIO_SID = "AC00000000000000000000000000000000"
TWILIO_TOKEN = "twilio-auth-token"
TWILIO_NUMBER = "+15557654321"


@dataclass
class Sent:
    platform: str
    to: str
    text: str
    thread: str | None = None
    buttons: list[tuple[str, str]] = field(default_factory=list)
    """The buttons under it, as the platform shows them: (title, what a press hands back)."""
    at: float = field(default_factory=time.monotonic)
    """When the stand-in took it (this machine's monotonic clock: bench/channels.py times replies by it)."""

    @property
    def said(self) -> str:
        """The message without the sources listed under it (plain-text platforms add them to the text)."""
        return self.text.split("\n\nSources: ", 1)[0]


HOOK_SECRET = "integrator-webhook-secret"


@dataclass
class IntegratorStandIn:
    """The integrator's webhook: it checks each body's signature (as its docs tell it to) and keeps one
    message per `Idempotency-Key`."""

    received: dict[str, dict[str, Any]] = field(default_factory=dict)
    """By idempotency key, in arrival order."""
    copies: int = 0
    """Requests whose key it had already."""
    forged: int = 0
    refusing: bool = False

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/dialogue")
        async def receive(request: Request) -> JSONResponse:
            body = await request.body()
            timestamp = request.headers.get("x-dialogue-timestamp", "")
            expected = webhook_signature(HOOK_SECRET, timestamp, body)
            if not hmac.compare_digest(request.headers.get("x-dialogue-signature", ""), expected):
                self.forged += 1
                return JSONResponse({"error": "bad signature"}, 401)
            if self.refusing:
                return JSONResponse({"error": "gone"}, 410)
            key = request.headers["idempotency-key"]
            if key in self.received:
                self.copies += 1
            else:
                self.received[key] = orjson.loads(body)
            return JSONResponse({"ok": True})

        return app


@dataclass
class PlatformStandIn:
    sent: list[Sent] = field(default_factory=list)
    requests: int = 0
    """Send calls received, taken or not."""
    down: int = 0
    """The next this many send calls get 503 (the platform is down)."""
    refusing: bool = False
    """Every send call gets 403 (a revoked token: refused for good)."""
    integrator: IntegratorStandIn = field(default_factory=lambda: IntegratorStandIn())
    """The integrator's webhook, served beside the platforms at `/hooks/dialogue`."""
    _ids: itertools.count[int] = field(default_factory=itertools.count)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def until(self, count: int) -> None:
        """Wait until the platform has taken `count` messages in all."""
        while len(self.sent) < count:
            self._arrived.clear()
            await self._arrived.wait()

    def _take(self, sent: Sent) -> None:
        self.sent.append(sent)
        self._arrived.set()

    def app(self) -> FastAPI:
        app = FastAPI()
        app.mount("/hooks", self.integrator.app())

        @app.post("/slack/api/chat.postMessage")
        async def slack(request: Request) -> JSONResponse:
            if request.headers.get("authorization") != f"Bearer {SLACK_TOKEN}":
                return JSONResponse({"ok": False, "error": "invalid_auth"})
            body = await _body(request)
            refused = self._refused()
            if refused == 503:
                return JSONResponse({"ok": False, "error": "service_unavailable"}, status_code=503)
            if refused == 403:
                return JSONResponse({"ok": False, "error": "account_inactive"})
            ts = f"{time.time():.6f}"
            blocks = body.get("blocks") or []
            blocks = (
                orjson.loads(blocks) if isinstance(blocks, str) else blocks
            )  # form-encoded: a JSON string
            buttons = [
                (element["text"]["text"], element["value"])
                for block in blocks
                if block["type"] == "actions"
                for element in block["elements"]
            ]
            self._take(Sent("slack", body["channel"], body["text"], body.get("thread_ts"), buttons))
            return JSONResponse({"ok": True, "channel": body["channel"], "ts": ts, "message": {"ts": ts}})

        @app.post("/telegram/bot{token}/sendMessage")
        async def telegram(token: str, request: Request) -> JSONResponse:
            body = await request.json()
            refused = self._refused() or (401 if token != TELEGRAM_TOKEN else None)
            if refused:
                return JSONResponse({"ok": False, "error_code": refused, "description": "refused"}, refused)
            keyboard = (body.get("reply_markup") or {}).get("inline_keyboard") or []
            buttons = [(button["text"], button["callback_data"]) for row in keyboard for button in row]
            self._take(Sent("telegram", str(body["chat_id"]), body["text"], buttons=buttons))
            return JSONResponse({"ok": True, "result": {"message_id": next(self._ids), "text": body["text"]}})

        @app.post("/whatsapp/v21.0/{phone_id}/messages")
        async def whatsapp(phone_id: str, request: Request) -> JSONResponse:
            body = await request.json()
            authorized = request.headers.get("authorization") == f"Bearer {WHATSAPP_TOKEN}"
            refused = self._refused() or (401 if not authorized or phone_id != WHATSAPP_PHONE_ID else None)
            if refused:
                return JSONResponse({"error": {"message": "refused", "code": refused}}, refused)
            if body["type"] == "interactive":
                interactive = body["interactive"]
                action = interactive["action"]
                rows = action.get("buttons") or action["sections"][0]["rows"]
                buttons = [
                    (r["reply"]["title"], r["reply"]["id"]) if "reply" in r else (r["title"], r["id"])
                    for r in rows
                ]
                self._take(Sent("whatsapp", body["to"], interactive["body"]["text"], buttons=buttons))
            else:
                self._take(Sent("whatsapp", body["to"], body["text"]["body"]))
            return JSONResponse(
                {
                    "messaging_product": "whatsapp",
                    "contacts": [{"input": body["to"], "wa_id": body["to"]}],
                    "messages": [{"id": f"wamid.sent{next(self._ids)}"}],
                }
            )

        @app.post("/twilio/2010-04-01/Accounts/{sid}/Messages.json")
        async def twilio(sid: str, request: Request) -> JSONResponse:
            form = dict(parse_qsl((await request.body()).decode()))
            expected = "Basic " + base64.b64encode(f"{TWILIO_SID}:{TWILIO_TOKEN}".encode()).decode()
            refused = self._refused() or (401 if request.headers.get("authorization") != expected else None)
            if refused:
                return JSONResponse({"code": 20003, "message": "refused", "status": refused}, refused)
            self._take(Sent("twilio", form["To"], form["Body"]))
            return JSONResponse(
                {
                    "sid": f"SM{next(self._ids):032d}",
                    "status": "queued",
                    "to": form["To"],
                    "body": form["Body"],
                },
                201,
            )

        return app

    def _refused(self) -> int | None:
        self.requests += 1
        if self.down > 0:
            self.down -= 1
            return 503
        return 403 if self.refusing else None


async def _body(request: Request) -> dict[str, Any]:
    if request.headers.get("content-type", "").startswith("application/json"):
        body: dict[str, Any] = await request.json()
        return body
    return dict(parse_qsl((await request.body()).decode()))


def channels(stand_in_url: str, webhook_base: str) -> dict[str, dict[str, Any]]:
    """`DIALOGUE_CHANNELS` for one channel of each platform, and the integrator's webhook, sending to the
    stand-ins (both served at `stand_in_url`)."""
    return {
        "shop-hooks": {"platform": "webhook", "url": f"{stand_in_url}/hooks/dialogue", "secret": HOOK_SECRET},
        # Another tenant's: the default tenant's keys cannot name it.
        "acme-hooks": {
            "platform": "webhook",
            "tenant": "acme",
            "url": f"{stand_in_url}/hooks/dialogue",
            "secret": HOOK_SECRET,
        },
        "shop-slack": {
            "platform": "slack",
            "signing_secret": SLACK_SECRET,
            "bot_token": SLACK_TOKEN,
            "api_url": f"{stand_in_url}/slack/api/",
        },
        "shop-telegram": {
            "platform": "telegram",
            "secret_token": TELEGRAM_SECRET,
            "bot_token": TELEGRAM_TOKEN,
            "api_url": f"{stand_in_url}/telegram",
        },
        "shop-whatsapp": {
            "platform": "whatsapp",
            "app_secret": WHATSAPP_SECRET,
            "access_token": WHATSAPP_TOKEN,
            "verify_token": WHATSAPP_VERIFY,
            "phone_number_id": WHATSAPP_PHONE_ID,
            "api_url": f"{stand_in_url}/whatsapp/v21.0",
        },
        "shop-sms": {
            "platform": "twilio",
            "account_sid": TWILIO_SID,
            "auth_token": TWILIO_TOKEN,
            "webhook_url": f"{webhook_base}/v1/channels/shop-sms",
            "api_url": f"{stand_in_url}/twilio",
        },
    }


@dataclass(frozen=True)
class Webhook:
    """A platform's request to the webhook: its path, headers and body."""

    path: str
    headers: dict[str, str]
    body: bytes


def slack_message(
    text: str,
    *,
    ts: str,
    thread_ts: str | None = None,
    channel: str = "C123ABC456",
    secret: str = SLACK_SECRET,
    at: float | None = None,
) -> Webhook:
    """Slack's documented `message` event (Events API), signed with v0 HMAC-SHA256."""
    event: dict[str, Any] = {
        "type": "message",
        "channel": channel,
        "user": "U123ABC456",
        "text": text,
        "ts": ts,
        "event_ts": ts,
        "channel_type": "channel",
    }
    if thread_ts:
        event["thread_ts"] = thread_ts
    body = orjson.dumps(
        {
            "token": "XXYYZZ",
            "team_id": "T123ABC456",
            "api_app_id": "A123ABC456",
            "event": event,
            "type": "event_callback",
            "authed_users": ["U123ABC456"],
            "event_id": f"Ev{ts.replace('.', '')}",
            "event_time": int(float(ts)),
        }
    )
    return slack_signed(body, secret=secret, at=at)


def slack_signed(body: bytes, *, secret: str = SLACK_SECRET, at: float | None = None) -> Webhook:
    timestamp = str(int(at if at is not None else time.time()))
    signature = hmac.new(secret.encode(), f"v0:{timestamp}:".encode() + body, hashlib.sha256).hexdigest()
    return Webhook(
        "/v1/channels/shop-slack",
        {
            "Content-Type": "application/json",
            "X-Slack-Request-Timestamp": timestamp,
            "X-Slack-Signature": f"v0={signature}",
        },
        body,
    )


def telegram_message(
    text: str, *, message_id: int, chat_id: int = 1111111, secret: str = TELEGRAM_SECRET
) -> Webhook:
    """Telegram's documented `Update` with a private chat's message, with the webhook's secret token."""
    person = {
        "id": chat_id,
        "first_name": "Test Firstname",
        "last_name": "Test Lastname",
        "username": "Testusername",
    }
    body = orjson.dumps(
        {
            "update_id": 10000 + message_id,
            "message": {
                "date": 1441645532,
                "chat": {**person, "type": "private"},
                "message_id": message_id,
                "from": person,
                "text": text,
            },
        }
    )
    return Webhook(
        "/v1/channels/shop-telegram",
        {"Content-Type": "application/json", "X-Telegram-Bot-Api-Secret-Token": secret},
        body,
    )


def whatsapp_message(
    text: str, *, message_id: str, sender: str = "16315551181", secret: str = WHATSAPP_SECRET
) -> Webhook:
    """The WhatsApp Cloud API's documented text-message notification, signed (X-Hub-Signature-256)."""
    message = {
        "from": sender,
        "id": message_id,
        "timestamp": str(int(time.time())),
        "text": {"body": text},
        "type": "text",
    }
    return _whatsapp_signed(message, sender, secret)


def _whatsapp_signed(message: dict[str, Any], sender: str, secret: str = WHATSAPP_SECRET) -> Webhook:
    body = orjson.dumps(
        {
            "object": "whatsapp_business_account",
            "entry": [
                {
                    "id": "102290129340398",
                    "changes": [
                        {
                            "value": {
                                "messaging_product": "whatsapp",
                                "metadata": {
                                    "display_phone_number": "15550783881",
                                    "phone_number_id": WHATSAPP_PHONE_ID,
                                },
                                "contacts": [{"profile": {"name": "Sheena Nelson"}, "wa_id": sender}],
                                "messages": [message],
                            },
                            "field": "messages",
                        }
                    ],
                }
            ],
        }
    )
    signature = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return Webhook(
        "/v1/channels/shop-whatsapp",
        {"Content-Type": "application/json", "X-Hub-Signature-256": f"sha256={signature}"},
        body,
    )


def twilio_message(
    text: str, *, sid: str, webhook_base: str, sender: str = "+15551234567", token: str = TWILIO_TOKEN
) -> Webhook:
    """Twilio's documented incoming-SMS request (form fields), signed (X-Twilio-Signature)."""
    fields = {
        "ToCountry": "US",
        "ToState": "CA",
        "SmsMessageSid": sid,
        "NumMedia": "0",
        "ToCity": "",
        "FromZip": "",
        "SmsSid": sid,
        "FromState": "CA",
        "SmsStatus": "received",
        "FromCity": "",
        "Body": text,
        "FromCountry": "US",
        "To": TWILIO_NUMBER,
        "ToZip": "",
        "NumSegments": "1",
        "MessageSid": sid,
        "AccountSid": TWILIO_SID,
        "From": sender,
        "ApiVersion": "2010-04-01",
    }
    url = f"{webhook_base}/v1/channels/shop-sms"
    signature = RequestValidator(token).compute_signature(url, fields)
    return Webhook(
        "/v1/channels/shop-sms",
        {"Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": signature},
        urlencode(fields).encode(),
    )


def slack_press(
    payload: str, title: str, *, channel: str, thread_ts: str, action_ts: str, user: str = "U123ABC456"
) -> Webhook:
    """Slack's documented `block_actions` interaction: a button under the bot's message in a thread
    pressed, posted form-encoded (`payload=`) to the app's interactivity URL, signed like an event."""
    interaction = {
        "type": "block_actions",
        "team": {"id": "T123ABC456", "domain": "example"},
        "user": {"id": user, "username": "someone", "team_id": "T123ABC456"},
        "api_app_id": "A123ABC456",
        "token": "XXYYZZ",
        "container": {
            "type": "message",
            "message_ts": "1700000001.000100",
            "channel_id": channel,
            "is_ephemeral": False,
            "thread_ts": thread_ts,
        },
        "trigger_id": "12466734323.1395872398.0f4d4e1e5d8a7e0b1c2d3e4f5a6b7c8d",
        "channel": {"id": channel, "name": "support"},
        "message": {"type": "message", "ts": "1700000001.000100", "thread_ts": thread_ts, "text": "?"},
        "response_url": "https://hooks.slack.com/actions/T123ABC456/1/abc",
        "actions": [
            {
                "action_id": "dialogue-0",
                "block_id": "dialogue-buttons",
                "text": {"type": "plain_text", "text": title, "emoji": True},
                "value": payload,
                "type": "button",
                "action_ts": action_ts,
            }
        ],
    }
    hook = slack_signed(urlencode({"payload": orjson.dumps(interaction).decode()}).encode())
    return Webhook(
        hook.path, {**hook.headers, "Content-Type": "application/x-www-form-urlencoded"}, hook.body
    )


def telegram_press(data: str, *, query_id: str, chat_id: int, message_id: int = 77) -> Webhook:
    """Telegram's documented `Update` with a `callback_query`: a button of the bot's inline keyboard
    pressed in a private chat."""
    person = {"id": chat_id, "is_bot": False, "first_name": "Test Firstname", "username": "Testusername"}
    body = orjson.dumps(
        {
            "update_id": 20000 + message_id,
            "callback_query": {
                "id": query_id,
                "from": person,
                "message": {
                    "message_id": message_id,
                    "from": {"id": 123456, "is_bot": True, "first_name": "Northwind"},
                    "chat": {**person, "type": "private"},
                    "date": 1441645532,
                    "text": "?",
                },
                "chat_instance": "-1234567890123456789",
                "data": data,
            },
        }
    )
    return Webhook(
        "/v1/channels/shop-telegram",
        {"Content-Type": "application/json", "X-Telegram-Bot-Api-Secret-Token": TELEGRAM_SECRET},
        body,
    )


def whatsapp_press(button_id: str, title: str, *, message_id: str, sender: str) -> Webhook:
    """The WhatsApp Cloud API's documented notification of a reply button pressed (`interactive`,
    `button_reply`), signed."""
    message = {
        "context": {"from": "15550783881", "id": "wamid.sent0"},
        "from": sender,
        "id": message_id,
        "timestamp": str(int(time.time())),
        "type": "interactive",
        "interactive": {"type": "button_reply", "button_reply": {"id": button_id, "title": title}},
    }
    return _whatsapp_signed(message, sender)
