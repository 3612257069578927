"""The web chat page and the operator console over real HTTP: served without a key, their assets,\ntheir labels, their configuration.

The page's JavaScript is not executed here (browser tests do that); these check what a browser
would be handed, and that the page's colours keep text readable.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin

import httpx
import pytest

from api import create_app
from dialogue.platform.settings import Settings
from tests.conftest import TEST_API_KEY, TEST_PAYLOAD_KEYS, free_port, serve

STATIC = Path(__file__).resolve().parent.parent / "api" / "static"
UI_PORT = 18233
JS_TYPES = ("text/javascript", "application/javascript")


def page_settings(folder: Path, **changes: object) -> Settings:
    """An API that never reaches Temporal: the page and its assets need neither Temporal nor a worker. A
    local development stack (opted into, as `make run` does) unless `changes` says otherwise."""
    fields: dict[str, object] = {
        "environment": "development",
        "data_dir": folder / "data",
        "database_url": f"sqlite:///{folder / 'dialogue.platform.db'}",
        "temporal_address": f"127.0.0.1:{free_port()}",
        "temporal_ui_port": UI_PORT,
        "api_key": TEST_API_KEY,
        "payload_keys": TEST_PAYLOAD_KEYS.spec(),
    }
    return Settings(**(fields | changes))  # type: ignore[arg-type]


@asynccontextmanager
async def without_key(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The API served over real HTTP for the block, and a client that sends no key."""
    server, task, base_url = await serve(create_app(settings))
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
            yield http
    finally:
        server.should_exit = True
        await task


@pytest.fixture(scope="module")
async def anonymous(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[httpx.AsyncClient]:
    async with without_key(page_settings(tmp_path_factory.mktemp("page"))) as http:
        yield http


class Page(HTMLParser):
    """The elements of a page with their attributes, and each element's own text."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.texts: dict[int, str] = {}
        self._open: list[int] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, {name: value or "" for name, value in attrs}))
        if tag not in ("meta", "link", "input", "br"):
            self._open.append(len(self.elements) - 1)

    def handle_endtag(self, tag: str) -> None:
        if self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for index in self._open:
            self.texts[index] = self.texts.get(index, "") + data

    def by_id(self, element_id: str) -> tuple[str, dict[str, str]]:
        (found,) = [e for e in self.elements if e[1].get("id") == element_id]
        return found

    def all(self, tag: str) -> list[tuple[int, dict[str, str]]]:
        return [(i, attrs) for i, (name, attrs) in enumerate(self.elements) if name == tag]


def scripts() -> dict[str, str]:
    """Every page's scripts by their path under /static."""
    return {path.relative_to(STATIC).as_posix(): path.read_text() for path in STATIC.rglob("*.js")}


async def test_the_front_page_redirects_to_the_chat_page(anonymous: httpx.AsyncClient) -> None:
    response = await anonymous.get("/", follow_redirects=False)
    assert response.status_code == 307
    assert response.headers["location"] == "/chat"
    assert (await anonymous.get("/favicon.ico")).status_code == 204  # no 404 in every page's log


async def test_the_chat_page_is_served_without_a_key_with_every_control_labelled(
    anonymous: httpx.AsyncClient,
) -> None:
    response = await anonymous.get("/chat")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    # Only this origin's scripts may run where the key is kept.
    assert "script-src 'self'" in response.headers["content-security-policy"]
    page = Page(response.text)

    labelled = {attrs["for"] for _, attrs in page.all("label")}
    for control in ("api-key", "message"):
        assert control in labelled
    for target in labelled:
        tag, _ = page.by_id(target)
        assert tag in ("input", "textarea", "select"), f"<label for={target}> names a {tag}"
    key_input = page.by_id("api-key")[1]
    assert key_input["type"] == "password"
    assert "name" not in key_input, "a named key input would be sent in the URL by a native form submit"
    assert page.by_id("message")[0] == "textarea"
    for index, attrs in page.all("button"):
        assert page.texts.get(index, "").strip() or attrs.get("aria-label"), attrs
    assert page.by_id("messages")[1]["aria-live"] == "polite"
    toggle = page.by_id("debug-toggle")[1]
    assert toggle["aria-expanded"] == "false"
    page.by_id(toggle["aria-controls"])


async def test_the_console_is_served_without_a_key_with_every_control_labelled(
    anonymous: httpx.AsyncClient,
) -> None:
    response = await anonymous.get("/console")
    assert response.status_code == 200
    assert "script-src 'self'" in response.headers["content-security-policy"]
    page = Page(response.text)
    labelled = {attrs["for"] for _, attrs in page.all("label")}
    for control in ("api-key", "filter-status", "filter-intent", "filter-q", "filter-degraded"):
        assert control in labelled
    for control in ("agent-name", "agent-message"):
        assert control in labelled
    for target in labelled:
        tag, _ = page.by_id(target)
        assert tag in ("input", "textarea", "select"), f"<label for={target}> names a {tag}"
    assert "name" not in page.by_id("api-key")[1]
    for index, attrs in page.all("button"):
        assert page.texts.get(index, "").strip() or attrs.get("aria-label"), attrs
    for chart in ("chart-turns", "chart-latency", "chart-degraded"):
        assert page.by_id(chart)[0] == "figure"
    assert page.by_id("conversations")[0] == "table"


@pytest.mark.parametrize("path", ["/chat", "/console"])
async def test_the_page_assets_load_with_their_content_types(anonymous: httpx.AsyncClient, path: str) -> None:
    page = Page((await anonymous.get(path)).text)
    sources = [attrs["src"] for _, attrs in page.all("script")]
    styles = [attrs["href"] for _, attrs in page.all("link") if attrs.get("rel") == "stylesheet"]
    assert sources and styles
    # Modules the pages' scripts import, relative to them, load too.
    for name, text in scripts().items():
        imports = re.findall(r'from "([^"]+)"', text)
        assert all(i.startswith(("./", "../")) for i in imports), f"{name} imports from elsewhere: {imports}"
        sources += [urljoin(f"/static/{name}", i) for i in imports]
    for source in sources:
        response = await anonymous.get(source)
        assert response.status_code == 200, source
        assert response.headers["content-type"].startswith(JS_TYPES), source
    for style in styles:
        response = await anonymous.get(style)
        assert response.status_code == 200, style
        assert response.headers["content-type"].startswith("text/css"), style


def test_the_page_loads_nothing_from_elsewhere_and_never_puts_the_key_in_a_url() -> None:
    files = {path.relative_to(STATIC).as_posix(): path.read_text() for path in STATIC.rglob("*.*")}
    pages = {"chat/index.html", "chat/chat.js", "console/index.html", "console/console.js", "shared/api.js"}
    assert pages <= set(files)
    for name, text in files.items():
        assert not re.search(r"(?:src|href)=\"(?:https?:)?//", text), f"{name} loads from another origin"
        assert "@import" not in text and "url(" not in text, name
    for name, text in scripts().items():
        for leak in ("?key=", "&key=", "api_key=", "apikey=", "access_token=", "token="):
            assert leak not in text.lower(), f"{name} puts the key in a URL ({leak})"
    # The key goes out in one place: the Authorization header.
    assert sum(text.count("Authorization:") for text in scripts().values()) == 1
    assert scripts()["shared/api.js"].count("Authorization: `Bearer ${this.key()}`") == 1


async def test_the_page_config_tells_where_the_web_ui_is(anonymous: httpx.AsyncClient) -> None:
    response = await anonymous.get("/config.json")
    assert response.status_code == 200
    assert response.json() == {
        "temporal_ui_url": f"http://127.0.0.1:{UI_PORT}",
        "namespace": "default",
        "workflow_id_prefix": "conv-",
        # A development stack on loopback, asked from this machine: the key to pre-fill.
        "development_key": TEST_API_KEY,
    }


async def test_the_development_key_is_not_offered_under_another_host_name(
    anonymous: httpx.AsyncClient,
) -> None:
    # A page whose host name was re-pointed at 127.0.0.1 (DNS rebinding) comes from loopback, but
    # names its own host: it gets no key, and the codec asks it for one.
    rebound = {"Host": "rebound.example:8000"}
    assert (await anonymous.get("/config.json", headers=rebound)).json()["development_key"] is None
    assert (await anonymous.get("/config.json", headers={"Host": "localhost:8000"})).json()["development_key"]
    decoded = await anonymous.post("/codec/decode", json={"payloads": []}, headers=rebound)
    assert decoded.status_code == 401


@pytest.mark.parametrize(
    "changes",
    [{"environment": "production"}, {"api_host": "0.0.0.0"}],
    ids=["production", "listening-beyond-loopback"],
)
async def test_the_development_key_is_offered_only_by_a_local_development_stack(
    tmp_path: Path, changes: dict[str, str]
) -> None:
    async with without_key(page_settings(tmp_path, **changes)) as http:
        response = await http.get("/config.json")
    assert response.status_code == 200
    assert response.json()["development_key"] is None


async def test_the_chat_config_uses_the_configured_web_ui(tmp_path: Path) -> None:
    settings = page_settings(
        tmp_path, temporal_ui_url="https://temporal.example.com/ui/", temporal_namespace="bots"
    )
    async with without_key(settings) as http:
        config = (await http.get("/config.json")).json()
    assert config["temporal_ui_url"] == "https://temporal.example.com/ui"
    assert config["namespace"] == "bots"


# --- contrast ------------------------------------------------------------------------------------

# (text, background) pairs of the stylesheet's colours, as chat.css uses them.
TEXT_ON = [
    ("text", "page"),
    ("muted", "page"),
    ("accent", "page"),
    ("on-error", "page"),
    ("on-accent", "accent"),
    ("on-user", "user"),
    ("on-bot", "bot"),
    ("link-on-bot", "bot"),
    ("on-warn", "warn"),
    ("on-error", "error"),
    ("text", "panel"),
    ("muted", "panel"),
    ("accent", "panel"),
]


def luminance(colour: str) -> float:
    """Relative luminance of `#rrggbb` (WCAG 2)."""
    channels = [int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(first: str, second: str) -> float:
    light, dark = sorted((luminance(first), luminance(second)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def test_contrast_of_a_known_pair() -> None:
    assert contrast("#000000", "#ffffff") == pytest.approx(21)
    assert contrast("#777777", "#ffffff") == pytest.approx(4.48, abs=0.01)


def test_text_colours_contrast_at_least_4_5_to_1() -> None:
    css = "\n".join(path.read_text() for path in STATIC.rglob("*.css"))
    colours = dict(re.findall(r"--([\w-]+):\s*(#[0-9a-fA-F]{6})\s*;", css))
    used = set(re.findall(r"var\(--([\w-]+)\)", css))
    assert used <= set(colours), f"undefined colours: {used - set(colours)}"
    for text, background in TEXT_ON:
        ratio = contrast(colours[text], colours[background])
        assert ratio >= 4.5, f"--{text} on --{background}: {ratio:.2f}:1"
