"""The chat page and the operator console in a real browser against a real `dialogue up`.

Debian's Chromium, headless, through Selenium and Debian's chromedriver (`make browser`), against one
`dialogue up` for the module (its own Temporal dev server, worker and API). Knowledge answers are
worded by an OpenAI-compatible stand-in for a paid LLM (tests/fake_llm.py) over real HTTP, so the
tests choose how a reply streams and when the model fails. Each step leaves a screenshot in
tests/artifacts/screenshots/ (kept out of git).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement

from dialogue.platform.flags import BUCKETS, bucket
from dialogue.platform.temporal import conversation_key
from tests.browser import (
    SCREENSHOTS,
    TYPING,
    Browser,
    TcpRelay,
    browser_marks,
    failures_kept,
    missing_browser,
    send_message,
    text_of,
)
from tests.fake_llm import FakeLlm, Plan
from tests.processes import ServedInThread, UpStack, answering_stack
from workflows.conversation import FALLBACK_TEXT

MISSING = missing_browser()
pytestmark = browser_marks()

AGENT_PERCENT = 0.01
KEY_STORAGE = "dialogue.apiKey"
CONVERSATION_STORAGE = "dialogue.conversationId"

# A help article with a web address, added through the API: its source is shown as a link.
ARTICLE = {
    "id": "express-shipping-prices",
    "title": "Express shipping prices",
    "source": "https://help.northwind.example/shipping/express",
    "text": (
        "# Express shipping prices\n\n"
        "Express shipping costs 12.90 euros per order. Express orders placed before 2 pm "
        "arrive the next business day."
    ),
}
QUESTION = "How much does express shipping cost?"
ANSWER = "Express shipping costs 12.90 euros per order and arrives the next business day [1]."
AGENT = "Sam"
AGENT_TEXT = "This is Sam from support: I can help with that."

# Every form control and button with no accessible name: no <label> (for= or around it), no
# aria-label, no aria-labelledby pointing at text.
UNLABELLED_CONTROLS_JS = """
const named = (el) => {
  const label = [...(el.labels || [])].some((l) => l.textContent.trim());
  const aria = (el.getAttribute("aria-label") || "").trim();
  const by = (el.getAttribute("aria-labelledby") || "").split(/\\s+/).filter(Boolean)
    .some((id) => (document.getElementById(id)?.textContent || "").trim());
  const text = el.tagName === "BUTTON" && el.textContent.trim();
  return Boolean(label || aria || by || text);
};
return [...document.querySelectorAll("input, select, textarea, button")]
  .filter((el) => el.type !== "hidden" && !named(el))
  .map((el) => el.outerHTML.slice(0, 160));
"""

# Records each text the newest bot message shows, and whether it was marked busy then, until the
# test reads `window.seenTexts`: what the user saw appear, token by token, with no timing involved.
RECORD_BOT_TEXT_JS = """
window.seenTexts = [];
const list = document.getElementById("messages");
new MutationObserver(() => {
  const bots = list.querySelectorAll("li.message.bot");
  const last = bots[bots.length - 1];
  const text = last?.querySelector(".text")?.textContent ?? "";
  const seen = window.seenTexts[window.seenTexts.length - 1];
  if (last && (!seen || seen.text !== text)) {
    window.seenTexts.push({ text, busy: last.getAttribute("aria-busy") === "true" });
  }
}).observe(list, { childList: true, subtree: true, characterData: true, attributes: true });
"""


# --- the stack, the stand-in LLM and the browser, once for the module ---------------------------


@pytest.fixture(scope="module")
def llm() -> Iterator[tuple[FakeLlm, str]]:
    fake = FakeLlm()
    with ServedInThread(fake.app(), "fake-llm") as served:
        yield fake, f"{served.base_url}/v1"


@dataclass
class Up:
    stack: UpStack
    key: str

    @property
    def chat(self) -> str:
        return f"{self.stack.api}/chat"

    @property
    def console(self) -> str:
        return f"{self.stack.api}/console"


@pytest.fixture(scope="module")
def up(
    tmp_path_factory: pytest.TempPathFactory, demo_model_dir: Path, llm: tuple[FakeLlm, str]
) -> Iterator[Up]:
    _, llm_url = llm
    folder = tmp_path_factory.mktemp("browser-up")
    # The demo's agent mode for one conversation in 10,000 (AGENT_PERCENT): the approval test picks one of
    # those; every other test's conversation stays scripted.
    flags = {"DIALOGUE_FLAGS": json.dumps({"agent": AGENT_PERCENT})}
    with answering_stack(folder, demo_model_dir, llm_url, ARTICLE, flags) as (stack, key):
        yield Up(stack, key)


@pytest.fixture(scope="module")
def browser(up: Up) -> Iterator[Browser]:
    """Started after the stack and quit before it: its open event streams would hold up the API's stop."""
    assert MISSING is None, MISSING  # reached in CI only: elsewhere the module is skipped
    for old in SCREENSHOTS.glob("test_*"):  # this module's, from an earlier run
        old.unlink()
    running = Browser()
    yield running
    running.quit()


@pytest.fixture(autouse=True)
def screenshots_named_after_the_test(request: pytest.FixtureRequest, browser: Browser) -> Iterator[None]:
    """Screenshots of a test are `<test>-<nn>-<step>.png`; a failed test leaves its last view and
    the page's text and console log as `<test>-failed.png` and `.txt` beside them."""
    with failures_kept(request, browser, request.node.name):
        yield
    for window in browser.driver.window_handles[1:]:  # a second window a failed test left open
        browser.driver.switch_to.window(window)
        browser.driver.close()
    browser.driver.switch_to.window(browser.driver.window_handles[0])


# --- what the tests do on the pages -----------------------------------------------------------


def storage(browser: Browser, name: str) -> str | None:
    value: str | None = browser.script("return localStorage.getItem(arguments[0])", name)
    return value


def open_chat(browser: Browser, up: Up, chat: str | None = None) -> None:
    """The chat page (at `chat`, else the stack's), its key saved: the key form offers the stack's
    key and Save key is all it takes."""
    chat = chat or up.chat
    if browser.driver.current_url.startswith(chat):
        browser.driver.refresh()
    else:
        browser.driver.get(chat)
    if storage(browser, KEY_STORAGE):
        browser.wait_for_element("#composer")
        return
    key_input = browser.wait_for_element("#api-key", "the key form")
    browser.wait_for("the development key to be offered", lambda _: key_input.get_attribute("value"))
    assert key_input.get_attribute("value") == up.key, browser.diagnostics()
    assert key_input.get_attribute("type") == "password"
    assert browser.driver.switch_to.active_element == key_input, "the key form opened without the focus"
    browser.screenshot("key offered")
    browser.find("#key-form button[type=submit]").click()
    browser.wait_for("the key form to close", lambda _: not browser.find("#key-form").is_displayed())
    assert storage(browser, KEY_STORAGE) == up.key


def bot_messages(browser: Browser) -> list[WebElement]:
    return browser.find_all("#messages li.message.bot")


def type_and_send(browser: Browser, text: str, midway: Callable[[], object] | None = None) -> WebElement:
    """Type into the message box (where the focus is) and press Enter; returns the reply's message once
    it is complete. `midway` runs once its first words are shown (or at once, had it no words in between)."""
    box = browser.driver.switch_to.active_element
    assert box.get_attribute("id") == "message", (
        f"the focus is not in the message box\n{browser.diagnostics()}"
    )
    reply = send_message(browser, box, text, lambda: bot_messages(browser), midway)
    assert box.get_attribute("value") == "", "the message box was not emptied"
    return reply


def new_conversation(browser: Browser) -> str:
    before = storage(browser, CONVERSATION_STORAGE)
    browser.find("#new-conversation").click()
    browser.wait_for("an empty transcript", lambda _: not browser.find_all("#messages li"))
    conversation_id = storage(browser, CONVERSATION_STORAGE)
    assert conversation_id and conversation_id != before
    return conversation_id


@dataclass
class Answered:
    conversation_id: str
    reply_text: str
    seen: list[dict[str, Any]]
    source_title: str
    source_href: str
    prompt: str


@pytest.fixture(scope="module")
def answered(browser: Browser, up: Up, llm: tuple[FakeLlm, str]) -> Answered:
    """A question typed and sent with Enter, its reply streamed in word by word: the first test's steps."""
    fake, _ = llm
    fake.plans = [Plan(text=ANSWER, token_delay=0.15)]
    browser.name = "test_a_message_sent_with_the_keyboard_streams_its_reply_with_a_source"
    open_chat(browser, up)
    browser.screenshot("empty chat")
    browser.script(RECORD_BOT_TEXT_JS)
    asked = len(fake.requests)
    reply = type_and_send(browser, QUESTION, midway=lambda: browser.screenshot("reply streaming"))
    browser.screenshot("reply with source")
    assert len(fake.requests) == asked + 1, "the reply did not come from the LLM"
    # Everything the model was shown: the passages come in a message of their own, not in the system prompt.
    prompt = "\n".join(str(m.get("content") or "") for m in fake.requests[-1]["messages"])
    link = reply.find_element("css selector", ".sources a")
    helpful = reply.find_element("css selector", "button.rate[aria-label='Helpful']")
    assert helpful.get_attribute("aria-pressed") == "false"
    helpful.click()
    browser.wait_for("the rating to be recorded", lambda _: helpful.get_attribute("aria-pressed") == "true")
    conversation_id = storage(browser, CONVERSATION_STORAGE)
    assert conversation_id
    return Answered(
        conversation_id=conversation_id,
        reply_text=text_of(reply),
        seen=browser.script("return window.seenTexts"),
        source_title=link.text,
        source_href=str(link.get_attribute("href")),
        prompt=prompt,
    )


# --- the tests --------------------------------------------------------------------------------


def test_a_message_sent_with_the_keyboard_streams_its_reply_with_a_source(
    browser: Browser, answered: Answered
) -> None:
    assert answered.reply_text == ANSWER, browser.diagnostics()
    # The reply grew in front of the user, word by word, while it was marked busy, before it was complete.
    partial = [
        s["text"]
        for s in answered.seen
        if s["busy"] and s["text"].strip() not in ("", TYPING) and len(s["text"].strip()) < len(ANSWER)
    ]
    seen = json.dumps(answered.seen, indent=1)
    assert len(set(partial)) >= 2, f"the reply did not stream; the page showed {seen}"
    assert all(ANSWER.startswith(text.strip()) for text in partial), seen
    # [1] is the article with a web address: the reply links to it.
    assert f'<document number="1" id="{ARTICLE["id"]}" title="{ARTICLE["title"]}">' in answered.prompt, (
        answered.prompt
    )
    assert (answered.source_title, answered.source_href) == (ARTICLE["title"], ARTICLE["source"])
    user = browser.find_all("#messages li.message.user")
    assert [text_of(m) for m in user] == [QUESTION]

    # The rating buttons say which one is pressed (the fixture pressed Helpful).
    pressed = {
        b.get_attribute("aria-label"): b.get_attribute("aria-pressed")
        for b in browser.find_all("#messages li.message.bot button.rate")
    }
    assert pressed == {"Helpful": "true", "Not helpful": "false"}

    # The debug panel: its button says whether it is open, and it shows the answer's intent.
    toggle = browser.find("#debug-toggle")
    assert toggle.get_attribute("aria-expanded") == "false" and not browser.find("#debug").is_displayed()
    toggle.click()
    assert toggle.get_attribute("aria-expanded") == "true"
    browser.wait_for_element("#debug", "the debug panel")
    browser.wait_for(
        "the intent in the debug panel", lambda _: browser.find("#debug-intent").text == "shipping_info"
    )
    assert browser.find("#debug-conversation").text == answered.conversation_id
    browser.screenshot("debug panel open")
    toggle.send_keys(Keys.SPACE)  # a button works from the keyboard too
    assert toggle.get_attribute("aria-expanded") == "false"
    assert not browser.find("#debug").is_displayed()
    browser.screenshot("debug panel closed")


def test_a_reload_shows_the_conversation_so_far(browser: Browser, up: Up, answered: Answered) -> None:
    browser.script(
        "localStorage.setItem(arguments[0], arguments[1])", CONVERSATION_STORAGE, answered.conversation_id
    )
    browser.driver.refresh()
    browser.wait_for("the transcript", lambda _: len(browser.find_all("#messages li.message")) >= 2)
    browser.screenshot("after reload")

    assert not browser.find("#key-form").is_displayed()  # the key is remembered
    assert storage(browser, CONVERSATION_STORAGE) == answered.conversation_id
    messages = browser.find_all("#messages li.message")
    roles = [str(m.get_attribute("class")).split()[-1] for m in messages]
    assert roles == ["user", "bot"], browser.diagnostics()
    assert [text_of(m) for m in messages] == [QUESTION, answered.reply_text]
    link = messages[1].find_element("css selector", ".sources a")
    assert (link.text, link.get_attribute("href")) == (answered.source_title, answered.source_href)
    # The rating given before the reload is shown pressed.
    ratings = {
        b.get_attribute("aria-label"): b.get_attribute("aria-pressed")
        for b in messages[1].find_elements("css selector", "button.rate")
    }
    assert ratings == {"Helpful": "true", "Not helpful": "false"}
    assert browser.driver.switch_to.active_element.get_attribute("id") == "message"  # ready to type


def test_an_agent_takes_over_from_the_console_and_the_user_sees_the_reply_live(
    browser: Browser, up: Up
) -> None:
    driver = browser.driver
    open_chat(browser, up)
    conversation_id = new_conversation(browser)
    greeting = type_and_send(browser, "hello")
    assert text_of(greeting), browser.diagnostics()
    chat = driver.current_window_handle
    browser.script("window.notReloaded = true")  # gone should the page load again
    browser.screenshot("chat before takeover")

    # The console, in a second window of the same browser: the key the chat saved serves it too.
    driver.switch_to.new_window("window")
    console = driver.current_window_handle
    driver.get(up.console)
    browser.wait_for_element("table#conversations", "the conversations table")
    assert not browser.find_all("#key-form") or not browser.find("#key-form").is_displayed(), (
        "the console asked for a key the chat had saved"
    )
    search = browser.wait_for_element("#filter-q")
    search.send_keys(conversation_id, Keys.ENTER)

    def only_this_one(_: WebDriver) -> bool:
        rows = browser.find_all("table#conversations button.open")
        return [r.get_attribute("data-conversation-id") for r in rows] == [conversation_id]

    browser.wait_for("the list filtered down to the conversation", only_this_one)
    browser.screenshot("console filtered")
    browser.click(f'table#conversations button.open[data-conversation-id="{conversation_id}"]')
    browser.wait_for(
        "the conversation's detail", lambda _: conversation_id in browser.find("#detail-title").text
    )
    browser.wait_for("its transcript", lambda _: browser.find_all("ol#transcript li.message.bot"))
    name = browser.wait_for_element("#agent-name")
    name.clear()
    name.send_keys(AGENT)
    browser.click("#take-over")
    box = browser.wait_for(
        "the agent's message box to open",
        lambda _: (el := browser.find("#agent-message")).is_displayed() and el.is_enabled() and el,
    )
    browser.screenshot("console took over")

    # The user writes while a person holds the conversation: the page says a person answers here.
    driver.switch_to.window(chat)
    browser.wait_for(
        "the handoff notice in the chat",
        lambda _: any("Handed off" in m.text for m in browser.find_all("#messages li.message.system")),
    )
    held = type_and_send(browser, "Is anyone there?")
    notices = [n.text for n in held.find_elements("css selector", ".notice.info")]
    assert any("A person is handling this conversation now" in n for n in notices), browser.diagnostics()
    browser.screenshot("chat held by a person")

    driver.switch_to.window(console)
    box.send_keys(AGENT_TEXT)
    browser.find("#agent-send").click()
    browser.wait_for(
        "the agent's message in the console's transcript",
        lambda _: any(AGENT_TEXT in m.text for m in browser.find_all("ol#transcript li.message.agent")),
    )
    browser.screenshot("console agent replied")

    driver.switch_to.window(chat)
    agent = browser.wait_for(
        "the agent's message in the chat, without a reload",
        lambda _: [m for m in browser.find_all("#messages li.message.agent") if AGENT_TEXT in m.text],
    )
    assert AGENT in agent[0].text  # "Agent (Sam): …"
    assert browser.script("return window.notReloaded") is True
    browser.screenshot("chat shows the agent")

    # Handed back, the bot answers the next turn again.
    driver.switch_to.window(console)
    browser.click("#hand-back")
    browser.wait_for("the take-over button again", lambda _: browser.find("#take-over").is_enabled())
    browser.screenshot("console handed back")
    driver.close()
    driver.switch_to.window(chat)
    browser.wait_for(
        "the handback notice in the chat",
        lambda _: any("handed back" in m.text for m in browser.find_all("#messages li.message.system")),
    )
    browser.find("#message").click()
    again = type_and_send(browser, "hello")
    assert text_of(again), browser.diagnostics()
    assert not again.find_elements("css selector", ".notice"), browser.diagnostics()
    browser.screenshot("bot answers again")


def test_a_degraded_turn_shows_its_notice_and_the_fallback_reply(
    browser: Browser, up: Up, llm: tuple[FakeLlm, str]
) -> None:
    fake, _ = llm
    open_chat(browser, up)
    new_conversation(browser)
    asked = len(fake.requests)
    fake.plans = [Plan(status=400)]  # a request the provider rejects: no retry helps, the turn degrades
    try:
        reply = type_and_send(browser, QUESTION)
    finally:
        fake.plans = [Plan(text=ANSWER)]
    browser.screenshot("degraded reply")
    assert len(fake.requests) == asked + 1  # the LLM was asked, and refused
    assert text_of(reply) == FALLBACK_TEXT, browser.diagnostics()
    notice = reply.find_element("css selector", ".notice.degraded")
    assert notice.is_displayed() and "fallback" in notice.text, notice.text
    assert not reply.find_elements("css selector", ".sources")
    live_notice = notice.text

    # The transcript keeps it: after a reload the fallback reply still says what it is.
    browser.driver.refresh()
    browser.wait_for("the transcript", lambda _: bot_messages(browser))
    browser.screenshot("degraded reply after reload")
    [reloaded] = bot_messages(browser)
    assert text_of(reloaded) == FALLBACK_TEXT, browser.diagnostics()
    assert "fallback" in reloaded.find_element("css selector", ".notice.degraded").text

    # Said live, the notice names the step that failed, once.
    assert "(generate failed)" in live_notice, live_notice


def test_the_chat_controls_are_labelled_and_tab_follows_the_page(
    browser: Browser, up: Up, answered: Answered
) -> None:
    open_chat(browser, up)
    browser.script(
        "localStorage.setItem(arguments[0], arguments[1])", CONVERSATION_STORAGE, answered.conversation_id
    )
    browser.driver.refresh()
    browser.wait_for("the transcript with its source", lambda _: browser.find_all("#messages .sources a"))
    # Every control of the page as rendered, the hidden key form's and the transcript's buttons included.
    assert browser.script(UNLABELLED_CONTROLS_JS) == [], browser.diagnostics()
    assert browser.find("#messages").get_attribute("aria-live") == "polite"

    # From the top of the page, Tab goes through the header's buttons, the transcript's link and
    # rating buttons, then the message box and Send.
    ActionChains(browser.driver).move_to_element(browser.find("header h1")).click().perform()
    reached = []
    for _ in range(12):
        ActionChains(browser.driver).send_keys(Keys.TAB).perform()
        focused = browser.driver.switch_to.active_element
        reached.append(
            focused.get_attribute("id")
            or focused.get_attribute("aria-label")
            or f"{focused.tag_name}:{focused.text}"
        )
        if reached[-1] == "send":
            break
    browser.screenshot("tabbed to send")
    assert reached == [
        "new-conversation",
        "change-key",
        "debug-toggle",
        f"a:{ARTICLE['title']}",
        "Helpful",
        "Not helpful",
        "message",
        "send",
    ], browser.diagnostics()


def test_the_console_controls_are_labelled(browser: Browser, up: Up) -> None:
    open_chat(browser, up)  # the console uses the key the chat saved
    browser.driver.get(up.console)
    browser.wait_for_element("#filters", "the console's filters")
    browser.wait_for("the conversations list", lambda _: browser.find_all("table#conversations button.open"))
    browser.click("table#conversations button.open")
    browser.wait_for_element("section#detail", "a conversation's detail")
    browser.screenshot("console detail")
    for control in (
        "#filter-status",
        "#filter-intent",
        "#filter-degraded",
        "#filter-q",
        "#agent-name",
        "#agent-message",
    ):
        assert browser.find_all(control), f"{control} is missing\n{browser.diagnostics()}"
    assert browser.script(UNLABELLED_CONTROLS_JS) == [], browser.diagnostics()


def turns_counted(up: Up) -> dict[str, int]:
    """The API's turns by outcome, as its /metrics counts them."""
    text = httpx.get(f"{up.stack.api}/metrics", timeout=10).text
    found = re.finditer(r'^dialogue_turns_total\{outcome="(\w+)"\} (\S+)$', text, re.MULTILINE)
    return {match.group(1): int(float(match.group(2))) for match in found}


def test_the_console_charts_show_the_apis_turn_counters(browser: Browser, up: Up) -> None:
    open_chat(browser, up)  # the console uses the key the chat saved
    counted = turns_counted(up)
    answered = counted.get("ok", 0) + counted.get("degraded", 0)
    browser.driver.get(up.console)
    browser.wait_for("the totals", lambda _: browser.find("#total-turns").text == str(answered))

    # Two more turns: the next sample counts them, and the turns-per-minute chart shows a rate.
    with httpx.Client(
        base_url=up.stack.api, headers={"Authorization": f"Bearer {up.key}"}, timeout=30
    ) as http:
        for text in ("hello", "thanks"):
            sent = http.post(f"/v1/conversations/charts-{uuid.uuid4().hex[:8]}/turns", json={"text": text})
            assert sent.status_code == 200, sent.text
    browser.wait_for("the next sample", lambda _: browser.find("#total-turns").text == str(answered + 2))
    browser.script("document.getElementById('charts').scrollIntoView()")
    browser.screenshot("charts")
    degraded = turns_counted(up).get("degraded", 0)
    assert browser.find("#total-degraded").text.endswith(f"% ({degraded})"), browser.diagnostics()
    summary = browser.find("#chart-turns svg").get_attribute("aria-label") or ""
    rate = re.match(r"Turns per minute: ([0-9.]+) over", summary)
    assert rate and float(rate.group(1)) > 0, summary
    for chart in ("#chart-latency", "#chart-degraded"):
        assert browser.find(f"{chart} svg").get_attribute("role") == "img"
        assert browser.find(f"{chart} figcaption").text.strip(), browser.diagnostics()


def test_a_dropped_connection_picks_the_stream_up_again(
    browser: Browser, up: Up, llm: tuple[FakeLlm, str]
) -> None:
    fake, _ = llm
    # The page reaches the API through a relay: a network that can fail.
    relay = TcpRelay(("127.0.0.1", int(up.stack.ports["api"])))
    try:
        open_chat(browser, up, f"http://127.0.0.1:{relay.port}/chat")
        conversation_id = new_conversation(browser)
        fake.plans = [Plan(text=ANSWER, token_delay=0.3)]
        cut: list[int] = []

        def drop_the_connection() -> None:
            browser.screenshot("reply streaming")
            cut.append(relay.cut())

        try:
            reply = type_and_send(browser, QUESTION, midway=drop_the_connection)
        finally:
            fake.plans = [Plan(text=ANSWER)]
        browser.screenshot("reply after reconnecting")
    finally:
        relay.close()
    assert cut and cut[0] > 0, "no connection was open to cut"
    assert text_of(reply) == ANSWER, browser.diagnostics()
    assert not reply.find_elements("css selector", ".notice.error"), browser.diagnostics()
    # One turn, answered once: the page followed the same turn again instead of sending another.
    with httpx.Client(
        base_url=up.stack.api, headers={"Authorization": f"Bearer {up.key}"}, timeout=30
    ) as http:
        transcript = http.get(f"/v1/conversations/{conversation_id}/messages").json()
    assert [(m["role"], m["text"]) for m in transcript["items"]] == [("user", QUESTION), ("bot", ANSWER)]


def test_the_console_shows_a_rating_given_while_it_is_open(
    browser: Browser, up: Up, answered: Answered
) -> None:
    open_chat(browser, up)  # the console uses the key the chat saved
    browser.driver.get(f"{up.console}#{answered.conversation_id}")  # the hash opens the conversation

    def rating() -> str:
        notes = browser.find_all("ol#transcript li.message.bot .rating")
        return notes[0].text if notes else ""

    browser.wait_for(
        "the rating the user gave in the chat", lambda _: "rated this answer helpful" in rating()
    )
    with httpx.Client(
        base_url=up.stack.api, headers={"Authorization": f"Bearer {up.key}"}, timeout=30
    ) as http:
        base = f"/v1/conversations/{answered.conversation_id}"
        [answer] = [m for m in http.get(f"{base}/messages").json()["items"] if m["role"] == "bot"]
        rated = http.post(f"{base}/turns/{answer['turn_id']}/feedback", json={"rating": "down"})
        assert rated.status_code == 201, rated.text
    browser.wait_for("the new rating", lambda _: "not helpful" in rating())
    browser.screenshot("rating updated")


def test_the_console_lists_a_conversations_reminders_and_cancels_one(browser: Browser, up: Up) -> None:
    conversation_id = f"remind-{uuid.uuid4().hex[:8]}"
    base = f"/v1/conversations/{conversation_id}"
    with httpx.Client(
        base_url=up.stack.api, headers={"Authorization": f"Bearer {up.key}"}, timeout=30
    ) as http:
        assert http.post(f"{base}/turns", json={"text": "hello"}).status_code == 200
        for body in (
            {"text": "Your parcel leaves today.", "in_seconds": 3600},
            {"text": "It has shipped!", "in_seconds": 7200, "on_event": "order-shipped:NW-105733"},
        ):
            assert http.post(f"{base}/reminders", json=body).status_code == 201
        open_chat(browser, up)  # the console uses the key the chat saved
        browser.driver.get(f"{up.console}#{conversation_id}")

        def listed() -> list[str]:
            return [item.text for item in browser.find_all("ul.reminders li")]

        browser.wait_for("the two reminders", lambda _: len(listed()) == 2)
        first, second = listed()
        assert "Your parcel leaves today." in first and "Cancel" in first
        assert "when order-shipped:NW-105733 is reported" in second
        browser.screenshot("reminders listed")
        browser.find_all("ul.reminders li button")[0].click()
        browser.wait_for("the cancelled reminder to leave the list", lambda _: len(listed()) == 1)
        browser.screenshot("reminder cancelled")
        left = http.get(base).json()["reminders"]
    assert [r["text"] for r in left] == ["It has shipped!"]


def agent_conversation_id() -> str:
    """A new conversation id on the side of the `agent` flag's rollout that has it on."""
    while True:
        candidate = f"agent-{uuid.uuid4().hex[:12]}"
        if bucket("agent", conversation_key("default", candidate)) < round(AGENT_PERCENT * BUCKETS / 100):
            return candidate


def test_the_user_approves_the_agents_call_in_the_chat_and_sees_what_it_did(
    browser: Browser, up: Up, llm: tuple[FakeLlm, str]
) -> None:
    fake, _ = llm
    conversation_id = agent_conversation_id()
    open_chat(browser, up)
    browser.script("localStorage.setItem(arguments[0], arguments[1])", CONVERSATION_STORAGE, conversation_id)
    open_chat(browser, up)
    done = "Done: order NW-105733 will go to Ringstr. 5, 1010 Wien."
    fake.plans = [
        Plan(tool_calls=[("change_address", {"order_id": "NW-105733", "address": "Ringstr. 5, 1010 Wien"})]),
        Plan(text=done),
    ]
    try:
        asking = type_and_send(browser, "Please send my order NW-105733 to Ringstr. 5, 1010 Wien instead")
        browser.screenshot("approval asked")
        assert "change_address" in text_of(asking) and "your approval" in text_of(asking), (
            browser.diagnostics()
        )
        group = asking.find_element("css selector", ".approval[role=group]")
        assert group.get_attribute("aria-label") == "Approve change_address?"
        before = len(bot_messages(browser))
        group.find_element("css selector", "button.approve").click()
        answer = browser.wait_for(
            "the agent's answer after the approval",
            lambda _: bot_messages(browser)[-1] if len(bot_messages(browser)) > before else None,
        )
        browser.screenshot("approved and answered")
    finally:
        fake.plans = [Plan(text=ANSWER)]
    assert text_of(answer) == done, browser.diagnostics()
    assert "You approved it." in asking.text
    tools = fake.requests[-1]["messages"]
    assert any(m["role"] == "tool" and "Ringstr. 5" in m["content"] for m in tools)

    # After a reload: the transcript has both answers, and no decision is offered any more.
    browser.driver.refresh()
    browser.wait_for("the transcript", lambda _: len(bot_messages(browser)) >= 2)
    assert [text_of(m) for m in bot_messages(browser)][-1] == done
    assert not browser.find_all("#messages .approval button")


def test_a_person_approves_the_agents_return_in_the_console_and_the_user_sees_the_answer_live(
    browser: Browser, up: Up, llm: tuple[FakeLlm, str]
) -> None:
    fake, _ = llm
    driver = browser.driver
    conversation_id = agent_conversation_id()
    open_chat(browser, up)
    browser.script("localStorage.setItem(arguments[0], arguments[1])", CONVERSATION_STORAGE, conversation_id)
    open_chat(browser, up)
    done = "Your return is open; the label comes by email."
    fake.plans = [
        Plan(tool_calls=[("start_return", {"order_id": "NW-654321", "reason": "too quiet"})]),
        Plan(text=done),
    ]
    try:
        asking = type_and_send(browser, "I want to return my speaker, order NW-654321")
        assert "start_return waits for a member of our team" in asking.text, browser.diagnostics()
        assert not asking.find_elements("css selector", ".approval button")  # not the user's to decide
        chat = driver.current_window_handle

        driver.switch_to.new_window("window")
        driver.get(f"{up.console}#{conversation_id}")
        approve = browser.wait_for_element(
            "ul.approvals button.approve", "the console's approve button for the pending return"
        )
        assert (approve.get_attribute("aria-label") or "").startswith("Approve start_return")
        browser.screenshot("console approval pending")
        approve.click()
        browser.wait_for(
            "the agent's answer in the console's transcript",
            lambda _: any(done in m.text for m in browser.find_all("ol#transcript li.message.bot")),
        )
        browser.wait_for("no approval waiting", lambda _: not browser.find_all("ul.approvals li"))
        browser.screenshot("console approved")
        driver.close()
        driver.switch_to.window(chat)
        browser.wait_for(
            "the agent's answer in the chat, without a reload",
            lambda _: any(done in text_of(m) for m in bot_messages(browser)),
        )
        browser.screenshot("chat shows the approved answer")
    finally:
        fake.plans = [Plan(text=ANSWER)]


CUSTOMER_STORAGE = "dialogue.customer"


def test_a_signed_in_customer_who_lets_the_bot_remember_is_greeted_by_name_next_time(
    browser: Browser, up: Up
) -> None:
    customer = f"NWC-{uuid.uuid4().hex[:6]}"
    open_chat(browser, up)
    try:
        browser.find("#customer-id").send_keys(customer)
        browser.find("#customer-sign-in").click()
        remember = browser.find("#remember-me")
        browser.wait_for("the memory switch for the signed-in customer", lambda _: remember.is_enabled())
        assert not remember.is_selected()  # off until the customer says yes
        remember.click()
        browser.wait_for(
            "the consent confirmed", lambda _: "remember" in browser.find("#customer-status").text
        )
        browser.screenshot("customer consented")
        browser.find("#message").click()
        type_and_send(browser, "Hi, my name is Anna and please deliver to Leeds")
        browser.wait_for(
            "her name and city listed as remembered",
            lambda _: (
                sorted(item.text for item in browser.find_all("#remembered li"))
                == ["city: Leeds", "name: Anna"]
            ),
        )
        new_conversation(browser)
        greeting = text_of(type_and_send(browser, "hello"))
        browser.screenshot("greeted from memory")
        assert "Anna" in greeting and "Leeds" in greeting, browser.diagnostics()
        # Withdrawn: everything is forgotten at once.
        remember.click()
        browser.wait_for("nothing listed", lambda _: not browser.find_all("#remembered li"))
    finally:
        browser.script("localStorage.removeItem(arguments[0])", CUSTOMER_STORAGE)
