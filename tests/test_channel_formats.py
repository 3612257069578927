"""How a message is laid out for each platform, within the platform's documented limits: pure functions,
no I/O (the platforms' stand-ins check the whole exchange in test_channels and test_channel_buttons)."""

from __future__ import annotations

import pytest

from dialogue.model.contracts import Button, ChannelAddress, Delivery, Source
from dialogue.platform.channels import outbound

pytestmark = pytest.mark.unit


def delivery(text: str, buttons: list[Button] | None = None, sources: list[Source] | None = None) -> Delivery:
    return Delivery(
        id="t/c/1",
        conversation_id="t/c",
        address=ChannelAddress(channel="x", platform="slack", to="C1"),
        text=text,
        buttons=buttons or [],
        sources=sources or [],
    )


def say(title: str, value: str | None = None) -> Button:
    return Button(title=title, action="say", value=value or title)


def test_a_long_slack_message_is_cut_into_sections_slack_takes_without_cutting_an_entity() -> None:
    text = "Fish & chips < 5 > 3. " * 400
    blocks = outbound._slack_blocks(delivery(text))
    sections = [b["text"]["text"] for b in blocks if b["type"] == "section"]
    assert len(sections) > 1 and all(len(s) <= outbound.SLACK_SECTION_CHARS for s in sections)
    joined = "".join(sections)
    assert joined == outbound._slack_escape(text)
    assert all(not s.endswith(("&", "&amp", "&lt", "&gt")) for s in sections)


def test_a_button_whose_payload_a_platform_would_cut_is_left_out_or_the_message_is_plain_text() -> None:
    long = say("too long", "x" * 2500)
    blocks = outbound._slack_blocks(delivery("Which?", [say("short"), long]))
    [actions] = [b for b in blocks if b["type"] == "actions"]
    assert [e["value"] for e in actions["elements"]] == ["say:short"]
    # WhatsApp: a payload past its 256 characters, or titles the same once cut to 20, make it text.
    assert outbound._whatsapp_message(delivery("Which?", [say("a", "y" * 300)]))["type"] == "text"
    twins = [say("Approve change_address 1"), say("Approve change_address 2")]
    assert outbound._whatsapp_message(delivery("Which?", twins))["type"] == "text"
    buttons = outbound._whatsapp_message(delivery("Which?", [say("Yes", "yes"), say("No", "no")]))
    assert buttons["interactive"]["type"] == "button"
    listed = outbound._whatsapp_message(delivery("Which?", [say(str(n)) for n in range(5)]))
    assert listed["interactive"]["type"] == "list"


def test_sources_are_named_under_the_text_unless_the_platform_would_refuse_the_length() -> None:
    source = Source(
        document_id="shipping", title="Shipping", url="https://help.example.com/s", snippet="", score=1
    )
    short = outbound._with_sources(delivery("Express costs 9.90.", sources=[source]), 4096)
    assert short == "Express costs 9.90.\n\nSources: Shipping (https://help.example.com/s)"
    long = "x" * 4090
    assert outbound._with_sources(delivery(long, sources=[source]), 4096) == long
