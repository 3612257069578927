"""The embeddable chat widget in a real browser, on a site of another origin than the API.

One `dialogue up` for the module, and a site (its own origin, 127.0.0.2) whose page embeds the widget with
one script tag and whose server mints its visitor's end-user token with its key, as an integrator's would.
The page reaches the API through a relay that can cut its connections. Debian's Chromium, headless,
through Selenium (`make browser`); replies are worded by the stand-in LLM over real HTTP, so they stream.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from dialogue.security.tokens import EndUserTokens
from tests.browser import (
    SCREENSHOTS,
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

MISSING = missing_browser()
pytestmark = browser_marks()

SITE_HOST = "127.0.0.2"  # loopback too, but another origin than the API's 127.0.0.1
USER = "visitor-4711"
TOKEN_SECRET = "widget-test-end-user-token-secret-0123456789abcdef"
ARTICLE = {
    "id": "gift-wrapping",
    "title": "Gift wrapping",
    "source": "https://help.northwind.example/orders/gift-wrapping",
    "text": "# Gift wrapping\n\nGift wrapping costs 3.50 euros per item and includes a printed card.",
}
QUESTION = "How much is gift wrapping?"
ANSWER = "Gift wrapping costs 3.50 euros per item, with a printed card [1]."
SECOND = "Can I add a card to gift wrapping?"
SECOND_ANSWER = "Yes: gift wrapping includes a printed card [1]."
THIRD = "And what does gift wrapping cost again?"
AGENT = "Sam"
AGENT_TEXT = "This is Sam from Northwind: your gift will be wrapped."

# The site's own styles, as unfriendly as a page's can be to what it embeds: none may reach the widget.
PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Northwind</title>
  <style>
    body {{ font: 30px/2 serif; color: rgb(200, 0, 0); }}
    p, li, ol, h2 {{ color: rgb(200, 0, 0) !important; }}
    button, textarea {{ display: none !important; }}
  </style>
</head>
<body>
  <h1>Northwind</h1>
  <p id="page-text">The shop's own page.</p>
  <div id="page-panel" class="panel launcher messages">The shop's own box.</div>
  <script src="{widget}" {token} data-heading="Northwind help" async></script>
</body>
</html>
"""

IN_WIDGET_JS = (
    "return document.querySelector('dialogue-chat')?.shadowRoot?.querySelector(arguments[0]) ?? null"
)
ALL_IN_WIDGET_JS = (
    "return [...(document.querySelector('dialogue-chat')?.shadowRoot?.querySelectorAll(arguments[0]) ?? [])]"
)
FOCUSED_JS = "return document.querySelector('dialogue-chat').shadowRoot.activeElement?.id ?? null"
VISITOR_JS = """
const key = Object.keys(localStorage).find((k) => k.startsWith("dialogue.widget-visitor:"));
return key ? localStorage.getItem(key) : null;
"""
FOCUSED_TEXT_JS = (
    "return document.querySelector('dialogue-chat').shadowRoot.activeElement?.textContent ?? null"
)
CONVERSATION_JS = """
const key = Object.keys(localStorage).find((k) => k.startsWith("dialogue.widget:") && k.endsWith(arguments[0]));
return key ? localStorage.getItem(key) : null;
"""
# Each text the newest bot message shows, until read: what the visitor saw appear, token by token.
RECORD_BOT_TEXT_JS = """
window.seenTexts = [];
const list = document.querySelector("dialogue-chat").shadowRoot.querySelector(".messages");
new MutationObserver(() => {
  const bots = list.querySelectorAll("li.message.bot");
  const text = bots[bots.length - 1]?.querySelector(".text")?.textContent ?? "";
  if (window.seenTexts[window.seenTexts.length - 1] !== text) window.seenTexts.push(text);
}).observe(list, { childList: true, subtree: true, characterData: true });
"""
# Controls in the widget with no accessible name (no label, aria-label, aria-labelledby or text).
UNNAMED_JS = """
const root = document.querySelector("dialogue-chat").shadowRoot;
const named = (el) => {
  const label = [...(el.labels || [])].some((l) => l.textContent.trim());
  const aria = (el.getAttribute("aria-label") || "").trim();
  const by = (el.getAttribute("aria-labelledby") || "").split(/\\s+/).filter(Boolean)
    .some((id) => (root.getElementById(id)?.textContent || "").trim());
  return Boolean(label || aria || by || (el.tagName === "BUTTON" && el.textContent.trim()));
};
return [...root.querySelectorAll("input, select, textarea, button")].filter((el) => !named(el))
  .map((el) => el.outerHTML.slice(0, 160));
"""


@dataclass
class Site:
    """The integrator's site: its page embeds the widget; its server mints its visitor's token with its key
    (the key never reaches the page). `expires_in` is the lifetime it tells the widget (the token itself
    lives a minute); `hand_expired` makes the next token one that has expired."""

    api: str
    key: str
    widget: str = ""
    expires_in: float = 60
    hand_expired: bool = False
    minted: list[str] = field(default_factory=list)
    tenant: str = ""

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/", self.page),
                Route("/anonymous", self.anonymous_page),
                Route("/dialogue-token", self.token, methods=["POST"]),
            ]
        )

    async def page(self, request: Request) -> HTMLResponse:
        return HTMLResponse(PAGE.format(widget=self.widget, token='data-token-url="/dialogue-token"'))

    async def anonymous_page(self, request: Request) -> HTMLResponse:
        """A page with no token endpoint behind it: the API mints its visitors' tokens."""
        return HTMLResponse(PAGE.format(widget=self.widget, token=""))

    async def token(self, request: Request) -> JSONResponse:
        async with httpx.AsyncClient(base_url=self.api, timeout=30) as http:
            answer = await http.post(
                "/v1/end-user-tokens",
                json={"user": USER, "ttl_seconds": 60},
                headers={"Authorization": f"Bearer {self.key}"},
            )
        assert answer.status_code == 201, answer.text
        minted = answer.json()
        self.tenant = minted["tenant"]
        if self.hand_expired:
            self.hand_expired = False
            minted["token"], _ = EndUserTokens(TOKEN_SECRET).mint(self.tenant, USER, ttl_seconds=1, by="site")
            await asyncio.sleep(1.5)  # expired by the time the widget uses it
            self.minted.append("expired")
        else:
            self.minted.append("fresh")
        told = datetime.now(UTC) + timedelta(seconds=self.expires_in)
        return JSONResponse(minted | {"expires_at": told.isoformat()})


@dataclass
class Embedded:
    stack: UpStack
    key: str
    site: Site
    site_url: str
    relay: TcpRelay


@pytest.fixture(scope="module")
def llm() -> Iterator[tuple[FakeLlm, str]]:
    fake = FakeLlm()
    with ServedInThread(fake.app(), "fake-llm") as served:
        yield fake, f"{served.base_url}/v1"


@pytest.fixture(scope="module")
def embedded(
    tmp_path_factory: pytest.TempPathFactory, demo_model_dir: Path, llm: tuple[FakeLlm, str]
) -> Iterator[Embedded]:
    _, llm_url = llm
    folder = tmp_path_factory.mktemp("widget-up")
    site = Site(api="", key="")
    with ServedInThread(site.app(), "site", host=SITE_HOST) as served_site:
        env = {
            # The site's origin, and only it, may call the API from a browser.
            "DIALOGUE_CORS_ORIGINS": json.dumps([served_site.base_url]),
            "DIALOGUE_END_USER_TOKEN_SECRET": TOKEN_SECRET,
            # Its pages may also start anonymous visitors' sessions, in the default tenant.
            "DIALOGUE_WIDGET_ORIGINS": json.dumps({served_site.base_url: "default"}),
        }
        with answering_stack(folder, demo_model_dir, llm_url, ARTICLE, env) as (stack, key):
            relay = TcpRelay(("127.0.0.1", int(stack.ports["api"])))
            site.api, site.key = stack.api, key
            site.widget = f"http://127.0.0.1:{relay.port}/widget.js"
            try:
                yield Embedded(stack, key, site, served_site.base_url, relay)
            finally:
                relay.close()


@pytest.fixture(scope="module")
def browser(embedded: Embedded) -> Iterator[Browser]:
    assert MISSING is None, MISSING  # reached in CI only: elsewhere the module is skipped
    for old in SCREENSHOTS.glob("test_widget*"):
        old.unlink()
    running = Browser()
    yield running
    running.quit()


@pytest.fixture(autouse=True)
def named_screenshots(request: pytest.FixtureRequest, browser: Browser) -> Iterator[None]:
    with failures_kept(request, browser, f"test_widget-{request.node.name}"):
        yield


# --- on the page -------------------------------------------------------------------------------


def part(browser: Browser, css: str) -> WebElement:
    found: WebElement = browser.wait_for(f"{css} in the widget", lambda _: browser.script(IN_WIDGET_JS, css))
    return found


def parts(browser: Browser, css: str) -> list[WebElement]:
    found: list[WebElement] = browser.script(ALL_IN_WIDGET_JS, css)
    return found


def open_widget(browser: Browser, embedded: Embedded, page: str = "/") -> None:
    """The site's page, freshly loaded, with the widget opened by its button."""
    browser.driver.get(embedded.site_url + page)
    launcher = part(browser, ".launcher")
    assert launcher.get_attribute("aria-expanded") == "false"
    launcher.click()
    browser.wait_for("the chat to open", lambda _: part(browser, ".panel").is_displayed())
    assert launcher.get_attribute("aria-expanded") == "true"
    assert browser.script(FOCUSED_JS) == "message", "the focus is not in the message box"


def bot_messages(browser: Browser) -> list[WebElement]:
    return parts(browser, ".messages li.message.bot")


def send(browser: Browser, text: str, midway: Callable[[], object] | None = None) -> WebElement:
    """Type into the widget's message box and press Enter; the bot's reply once complete."""
    return send_message(browser, part(browser, "#message"), text, lambda: bot_messages(browser), midway)


def transcript(embedded: Embedded, conversation_id: str) -> list[tuple[str, str]]:
    with httpx.Client(
        base_url=embedded.stack.api, headers={"Authorization": f"Bearer {embedded.key}"}, timeout=30
    ) as http:
        answer = http.get(f"/v1/conversations/{conversation_id}/messages")
    assert answer.status_code == 200, answer.text
    return [(m["role"], m["text"]) for m in answer.json()["items"]]


def shown(browser: Browser) -> list[tuple[str, str]]:
    roles = ("user", "bot", "agent", "system")
    return [
        (next(r for r in roles if r in str(item.get_attribute("class")).split()), text_of(item))
        for item in parts(browser, ".messages li.message")
    ]


# --- the tests ---------------------------------------------------------------------------------


def test_the_widget_converses_from_another_origin_with_a_streamed_reply_and_its_source(
    browser: Browser, embedded: Embedded, llm: tuple[FakeLlm, str]
) -> None:
    fake, _ = llm
    fake.plans = [Plan(text=ANSWER, token_delay=0.15)]
    open_widget(browser, embedded)
    browser.screenshot("open")
    browser.script(RECORD_BOT_TEXT_JS)
    reply = send(browser, QUESTION)
    browser.screenshot("answered")
    assert text_of(reply) == ANSWER, browser.diagnostics()
    seen = browser.script("return window.seenTexts")
    partial = [t for t in seen if t and t != ANSWER and ANSWER.startswith(t.strip())]
    assert len(partial) >= 3, f"the reply did not stream in: {seen}"
    link = reply.find_element("css selector", ".sources a")
    assert link.get_attribute("href") == ARTICLE["source"]
    # The page's origin is not the API's: the conversation went through CORS, with the site's token.
    assert embedded.site_url.startswith(f"http://{SITE_HOST}:")
    assert embedded.site.minted and embedded.site.minted[0] == "fresh"
    conversation_id = browser.script(CONVERSATION_JS, USER)
    assert conversation_id
    assert transcript(embedded, conversation_id) == [("user", QUESTION), ("bot", ANSWER)]


def test_no_style_crosses_between_the_page_and_the_widget(browser: Browser, embedded: Embedded) -> None:
    if not parts(browser, ".launcher"):
        open_widget(browser, embedded)
    style = "return getComputedStyle(arguments[0])[arguments[1]]"
    # The page's rules (every button hidden, red 30px serif text) do not reach into the widget.
    launcher, box = part(browser, ".launcher"), part(browser, "#message")
    assert browser.script(style, launcher, "display") != "none"
    assert browser.script(style, box, "display") != "none"
    heading = part(browser, "#heading")
    assert browser.script(style, heading, "color") != "rgb(200, 0, 0)"
    assert browser.script(style, heading, "fontFamily") != "serif"
    assert browser.script(style, launcher, "fontSize") != "30px"
    # And the widget's rules do not reach the page: its own box with the widget's class names is plain.
    page_panel = browser.find("#page-panel")
    assert browser.script(style, page_panel, "borderTopWidth") == "0px"
    assert browser.script(style, page_panel, "backgroundColor") == "rgba(0, 0, 0, 0)"
    assert browser.script(style, browser.find("#page-text"), "color") == "rgb(200, 0, 0)"


def test_the_widget_is_used_with_the_keyboard_and_every_control_is_named(
    browser: Browser, embedded: Embedded
) -> None:
    open_widget(browser, embedded)
    assert browser.script(UNNAMED_JS) == []
    panel = part(browser, ".panel")
    assert panel.get_attribute("role") == "dialog"
    assert part(browser, ".messages").get_attribute("aria-live") == "polite"
    part(browser, "#message").send_keys(Keys.TAB)
    assert browser.script(FOCUSED_TEXT_JS) == "Send"
    part(browser, "#message").send_keys(Keys.ESCAPE)
    browser.wait_for("the chat to close", lambda _: not panel.is_displayed())
    assert part(browser, ".launcher").get_attribute("aria-expanded") == "false"
    assert browser.script(FOCUSED_TEXT_JS) == "Northwind help"  # back on the button that opened it


def test_the_token_is_renewed_before_it_expires_and_when_the_api_refuses_it(
    browser: Browser, embedded: Embedded, llm: tuple[FakeLlm, str]
) -> None:
    fake, _ = llm
    site = embedded.site
    site.expires_in = 2  # the widget renews at 80% of what it is told: every 1.6 s
    try:
        open_widget(browser, embedded)
        before = len(site.minted)
        browser.wait_for("two renewals", lambda _: len(site.minted) >= before + 2)
        # The next token handed out has expired by the time the widget uses it; then no renewal for a while.
        site.hand_expired, site.expires_in = True, 60
        browser.wait_for("the expired token to be handed out", lambda _: "expired" in site.minted[before:])
        handed = len(site.minted)
        fake.plans = [Plan(text=SECOND_ANSWER)]
        reply = send(browser, SECOND)
        browser.screenshot("answered after a refused token")
    finally:
        site.expires_in, site.hand_expired = 60, False
    assert text_of(reply) == SECOND_ANSWER, browser.diagnostics()
    assert not reply.find_elements("css selector", ".notice.error"), browser.diagnostics()
    # The API refused the expired token (401): the widget asked the site for a new one and sent again.
    assert site.minted[handed:] == ["fresh"], site.minted


def test_a_dropped_connection_and_a_reload_neither_lose_nor_repeat_a_message(
    browser: Browser, embedded: Embedded, llm: tuple[FakeLlm, str]
) -> None:
    fake, _ = llm
    open_widget(browser, embedded)
    conversation_id = browser.script(CONVERSATION_JS, USER)
    before = transcript(embedded, conversation_id)
    fake.plans = [Plan(text=ANSWER, token_delay=0.3)]
    cut: list[int] = []
    try:
        reply = send(browser, THIRD, midway=lambda: cut.append(embedded.relay.cut()))
    finally:
        fake.plans = [Plan(text=ANSWER)]
    assert cut and cut[0] > 0, "no connection was open to cut"
    assert text_of(reply) == ANSWER, browser.diagnostics()
    assert not reply.find_elements("css selector", ".notice.error"), browser.diagnostics()
    after = [*before, ("user", THIRD), ("bot", ANSWER)]
    assert transcript(embedded, conversation_id) == after  # one turn, answered once
    open_widget(browser, embedded)  # the page loaded again: the same conversation, each message once
    browser.wait_for("the transcript", lambda _: len(shown(browser)) >= len(after))
    assert shown(browser) == after
    assert browser.script(CONVERSATION_JS, USER) == conversation_id


def test_a_person_takes_over_and_hands_back_while_the_widget_is_open(
    browser: Browser, embedded: Embedded
) -> None:
    open_widget(browser, embedded)
    conversation_id = browser.script(CONVERSATION_JS, USER)
    browser.wait_for("the transcript", lambda _: shown(browser))
    with httpx.Client(
        base_url=embedded.stack.api, headers={"Authorization": f"Bearer {embedded.key}"}, timeout=30
    ) as http:
        taken = http.post(f"/v1/conversations/{conversation_id}/handoff", json={"agent": AGENT})
        assert taken.status_code == 200, taken.text
        said = http.post(
            f"/v1/conversations/{conversation_id}/agent-messages", json={"text": AGENT_TEXT, "agent": AGENT}
        )
        assert said.status_code == 201, said.text
        browser.wait_for("the person's message", lambda _: ("agent", AGENT_TEXT) in shown(browser))
        back = http.post(f"/v1/conversations/{conversation_id}/handback", json={"agent": AGENT})
        assert back.status_code == 200, back.text
    browser.wait_for(
        "the handback notice", lambda _: sum(role == "system" for role, _ in shown(browser)) >= 2
    )
    browser.screenshot("handed back")
    roles = [role for role, _ in shown(browser)]
    assert roles.count("agent") == 1 and roles.count("system") == 2, shown(browser)


def test_the_api_lets_only_listed_origins_call_it_from_a_browser(embedded: Embedded) -> None:
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    with httpx.Client(base_url=embedded.stack.api, timeout=30) as http:
        listed = http.options("/v1/conversations/x/turns", headers={"Origin": embedded.site_url, **preflight})
        other = http.options(
            "/v1/conversations/x/turns", headers={"Origin": "http://127.0.0.3:9", **preflight}
        )
        script = http.get("/widget.js", headers={"Origin": "http://127.0.0.3:9"})
    assert listed.headers.get("access-control-allow-origin") == embedded.site_url
    assert "access-control-allow-origin" not in other.headers
    # The widget's code itself is public: any page may load it.
    assert script.status_code == 200 and script.headers["access-control-allow-origin"] == "*"


def test_a_site_without_a_server_gets_anonymous_visitors_who_keep_their_conversation(
    browser: Browser, embedded: Embedded, llm: tuple[FakeLlm, str]
) -> None:
    fake, _ = llm
    minted = len(embedded.site.minted)
    fake.plans = [Plan(text=ANSWER)]
    open_widget(browser, embedded, "/anonymous")
    reply = send(browser, QUESTION)
    assert text_of(reply) == ANSWER, browser.diagnostics()
    visitor = browser.script(VISITOR_JS)
    assert visitor, "the visitor's id was not kept"
    conversation_id = browser.script(CONVERSATION_JS, f"visitor-{visitor}")
    assert conversation_id and conversation_id != browser.script(CONVERSATION_JS, USER)
    assert transcript(embedded, conversation_id) == [("user", QUESTION), ("bot", ANSWER)]
    assert len(embedded.site.minted) == minted  # the site's server was not asked: the API minted it
    open_widget(browser, embedded, "/anonymous")  # a reload: the same visitor, the same conversation
    browser.wait_for("the transcript", lambda _: len(shown(browser)) >= 2)
    assert shown(browser) == [("user", QUESTION), ("bot", ANSWER)]
    assert browser.script(VISITOR_JS) == visitor
