"""A real browser for the end-to-end tests: Debian's Chromium, headless, driven by Selenium through the
chromedriver built from the same source (`make browser` installs both). Nothing downloads a browser:
the driver's path is given, so Selenium Manager (which would look for one) is never run.

Every wait is explicit and generous; a failed wait says what it waited for and shows the page's
text and the browser's console log, and tests save a screenshot of each step."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, TypeVar

import pytest
from selenium import webdriver
from selenium.common.exceptions import (
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOTS = Path(__file__).resolve().parent / "artifacts" / "screenshots"
"""Kept out of git (.gitignore: tests/artifacts/); CI may keep them as artifacts."""
WAIT_SECONDS = 30.0
WINDOW = (1280, 900)

# As root Chromium needs --no-sandbox. The rest keep it off the network: no component updates, sync,
# field trials or QUIC probes (on a closed network they only pile up refused connections).
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    f"--window-size={WINDOW[0]},{WINDOW[1]}",
]

T = TypeVar("T")


def browser_marks() -> list[pytest.MarkDecorator]:
    """A module of browser tests' marks: skipped only where a developer has not run `make browser` (in CI,
    `CI` set, a missing browser fails), and 300 s a test, as the first also starts a stack and the browser."""
    missing = missing_browser()
    return [
        pytest.mark.skipif(
            missing is not None and not os.environ.get("CI"), reason=f"{missing}; CI fails instead"
        ),
        pytest.mark.timeout(300),
    ]


def missing_browser() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if not missing:
        return None
    return f"{' and '.join(missing)} missing: `make browser` installs Debian's chromium and chromium-driver"


class Browser:
    """One headless Chromium with a fresh profile; `name` prefixes its screenshots."""

    def __init__(self) -> None:
        self._profile = tempfile.TemporaryDirectory(prefix="chromium-profile-")
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in [*FLAGS, f"--user-data-dir={self._profile.name}"]:
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self._console: list[str] = []
        self.name = "browser"
        self._steps: dict[str, int] = {}
        try:
            self.driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        except Exception:
            self._profile.cleanup()
            raise

    def quit(self) -> None:
        try:
            self.driver.quit()
        finally:
            self._profile.cleanup()

    # --- finding and waiting -------------------------------------------------------------------

    def find(self, css: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def find_all(self, css: str) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def wait_for(self, what: str, condition: Callable[[WebDriver], T | Literal[False] | None]) -> T:
        """Wait until `condition` gives something truthy (and return it); fail saying `what` did not happen.

        An element missing, or replaced while the condition looked at it (a list drawn again), is
        looked for again."""
        wait = WebDriverWait(
            self.driver,
            WAIT_SECONDS,
            poll_frequency=0.1,
            ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
        )
        try:
            result = wait.until(condition)
        except TimeoutException:
            raise AssertionError(f"waited {WAIT_SECONDS:.0f} s for {what}\n{self.diagnostics()}") from None
        assert result is not None  # `until` returns a truthy value only
        return result

    def wait_for_element(self, css: str, what: str | None = None) -> WebElement:
        """The first displayed element matching `css`, once there is one."""

        def shown(driver: WebDriver) -> WebElement | None:
            for element in driver.find_elements(By.CSS_SELECTOR, css):
                if element.is_displayed():
                    return element
            return None

        return self.wait_for(what or f"{css} to be shown", shown)

    def click(self, css: str, what: str | None = None) -> None:
        """Click the first displayed element matching `css`, found afresh until the click lands."""

        def clicked(driver: WebDriver) -> bool:
            for element in driver.find_elements(By.CSS_SELECTOR, css):
                if element.is_displayed() and element.is_enabled():
                    element.click()
                    return True
            return False

        self.wait_for(what or f"{css} to be clicked", clicked)

    def script(self, source: str, *args: Any) -> Any:
        return self.driver.execute_script(source, *args)

    # --- what a failure shows ------------------------------------------------------------------

    def console_log(self) -> list[str]:
        """The page's console messages (errors, warnings, logs) since the browser started."""
        try:
            entries = self.driver.get_log("browser")  # Chromium's own command
        except WebDriverException:
            entries = []
        self._console += [f"{entry['level']} {entry['message']}" for entry in entries]
        return list(self._console)

    def diagnostics(self) -> str:
        """The page's address, its visible text and its console log: what a reader of a failure needs."""
        try:
            url = self.driver.current_url
            text = self.find("body").text
            storage = self.script("return Object.assign({}, localStorage)") or {}
        except WebDriverException as err:
            return f"(the page cannot be read: {err.msg})"
        storage = {key: ("…" if "key" in key.lower() else value) for key, value in storage.items()}
        console = "\n".join(self.console_log()[-30:]) or "(empty)"
        return (
            f"--- page {url}\n{text}\n--- localStorage {json.dumps(storage)}\n"
            f"--- browser console (last 30)\n{console}"
        )

    def screenshot(self, step: str) -> Path:
        """Save the window as `<name>-<nn>-<step>.png` in tests/artifacts/screenshots/."""
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        number = self._steps[self.name] = self._steps.get(self.name, 0) + 1
        slug = re.sub(r"[^a-z0-9]+", "-", step.lower()).strip("-")
        path = SCREENSHOTS / f"{self.name}-{number:02d}-{slug}.png"
        assert self.driver.save_screenshot(str(path)), f"no screenshot saved at {path}"
        return path


class TcpRelay:
    """A TCP relay on a free loopback port to `target`, whose open connections can be cut at once:
    a dropped connection as the browser meets it (the stream it reads ends in an error), while new
    connections go through again."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name="relay", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._open |= {client, upstream}
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            self._close(source, sink)

    def _close(self, *sockets: socket.socket) -> None:
        for sock in sockets:
            with self._lock:
                self._open.discard(sock)
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def cut(self) -> int:
        """Close every connection open now; returns how many there were."""
        with self._lock:
            current = list(self._open)
        self._close(*current)
        return len(current)

    def close(self) -> None:
        self._listener.close()
        self.cut()


TYPING = "\u2026"  # the dots a reply shows until its first word


def text_of(message: WebElement) -> str:
    """A transcript entry's text (the chat page's and the widget's markup)."""
    return str(message.find_element("css selector", ".text").text)


def send_message(
    browser: Browser,
    box: WebElement,
    text: str,
    replies: Callable[[], list[WebElement]],
    midway: Callable[[], object] | None = None,
) -> WebElement:
    """Type `text` into the message `box` and press Enter; the bot's reply (the newest of `replies`) once it
    is complete, no longer `aria-busy`. `midway` runs once its first words are shown (or at once, had it
    no words in between)."""
    before = len(replies())
    box.send_keys(text)
    box.send_keys(Keys.ENTER)
    if midway is not None:

        def started(_: WebDriver) -> bool:
            found = replies()
            if len(found) <= before:
                return False
            busy = found[-1].get_attribute("aria-busy") == "true"
            return not busy or text_of(found[-1]).strip() not in ("", TYPING)

        browser.wait_for(f"the first words of the reply to {text!r}", started)
        midway()

    def answered(_: WebDriver) -> WebElement | None:
        found = replies()
        if len(found) > before and found[-1].get_attribute("aria-busy") == "false":
            return found[-1]
        return None

    reply: WebElement = browser.wait_for(f"the reply to {text!r}", answered)
    return reply


@contextlib.contextmanager
def failures_kept(request: pytest.FixtureRequest, browser: Browser, name: str) -> Iterator[None]:
    """Around one test: its screenshots are `<name>-<nn>-<step>.png`; should it fail, its last view and
    the page's text and console log are kept as `<name>-failed.png` and `.txt` beside them."""
    browser.name = name
    failed_before = request.session.testsfailed
    yield
    if request.session.testsfailed > failed_before:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        browser.driver.save_screenshot(str(SCREENSHOTS / f"{name}-failed.png"))
        (SCREENSHOTS / f"{name}-failed.txt").write_text(browser.diagnostics())
