"""A deployment's channels, from `DIALOGUE_CHANNELS` (JSON: a name for each channel, its settings).

A channel is one bot's presence on one platform for one tenant: the Slack app, the Telegram bot, the
WhatsApp number or the Twilio number; or the integrator's own webhook, which receives the messages of the
conversations started over the API that name it. Its secrets come from the environment with the rest of its settings,
never from a bot's folder (bot.yaml is versioned and published; a secret in it would be too). The webhook
a platform calls is `/v1/channels/{name}`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, SecretStr

CHANNEL_NAME = r"^[a-z0-9][a-z0-9-]{0,62}$"
"""A channel's name: a part of its webhook's path."""


class _Channel(BaseModel):
    tenant: str = "default"
    """The tenant the channel's conversations belong to."""
    bot: str | None = None
    """The bot that answers (a released bot's name); None: the deployment's default bot."""


class SlackChannel(_Channel):
    """A Slack app subscribed to message events (Events API): each thread is a conversation."""

    platform: Literal["slack"]
    signing_secret: SecretStr
    """The app's signing secret: every request's `X-Slack-Signature` is checked with it."""
    bot_token: SecretStr
    """The bot user's token (`xoxb-…`), for `chat.postMessage`."""
    api_url: str = "https://slack.com/api/"


class TelegramChannel(_Channel):
    """A Telegram bot whose webhook was set with a `secret_token`: each chat is a conversation."""

    platform: Literal["telegram"]
    secret_token: SecretStr
    """What Telegram sends in `X-Telegram-Bot-Api-Secret-Token` (`setWebhook`'s `secret_token`)."""
    bot_token: SecretStr
    api_url: str = "https://api.telegram.org"


class WhatsAppChannel(_Channel):
    """A WhatsApp Cloud API number: each user's chat with it is a conversation."""

    platform: Literal["whatsapp"]
    app_secret: SecretStr
    """The Meta app's secret: every request's `X-Hub-Signature-256` is its HMAC-SHA256 of the body."""
    access_token: SecretStr
    verify_token: SecretStr
    """What the webhook's subscription request (`GET`, `hub.verify_token`) must carry."""
    phone_number_id: str
    """The number the replies are sent from."""
    api_url: str = "https://graph.facebook.com/v21.0"


class TwilioChannel(_Channel):
    """A Twilio number receiving SMS: each sender's chat with it is a conversation."""

    platform: Literal["twilio"]
    account_sid: str
    auth_token: SecretStr
    """Signs every request (`X-Twilio-Signature`) and authenticates the replies."""
    webhook_url: str | None = None
    """The URL Twilio calls, as Twilio sees it (behind a proxy it differs from the API's own view): the
    signature covers it. None: the request's own URL."""
    api_url: str = "https://api.twilio.com"


class WebhookChannel(_Channel):
    """The integrator's own endpoint: a conversation started over the API naming this channel has its
    messages (replies, a person's messages, reminders) POSTed there, signed, retried, dead-lettered."""

    platform: Literal["webhook"]
    url: str
    """Where the messages go (HTTPS in production)."""
    secret: SecretStr
    """Signs every body: `X-Dialogue-Signature: sha256=` HMAC-SHA256 of `{X-Dialogue-Timestamp}.{body}`."""


ChannelConfig = Annotated[
    SlackChannel | TelegramChannel | WhatsAppChannel | TwilioChannel | WebhookChannel,
    Field(discriminator="platform"),
]
