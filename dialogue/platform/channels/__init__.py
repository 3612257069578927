"""Messaging platforms: a conversation held on Slack, Telegram, WhatsApp or by SMS (Twilio).

`config`: a deployment's channels, their tenant, bot and secrets (`DIALOGUE_CHANNELS`). `inbound`: a
platform's webhook request verified (its own signature scheme) and read as a user's message. `outbound`:
a message sent back through the platform's API, with its own SDK where it has one. `ledger`: what was
delivered, the dead letters, and the conversation a chat is holding now.
"""
