"""Attacks on a bot's HTTP tools, against a real HTTP server: a model (or a user steering it) cannot move
the path, pick the host, reach a private address, send what the schema never declared, read the
worker's secrets, or flood the worker with an answer."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
from pydantic import ValidationError

from dialogue.brain.agent.http_tools import MAX_RESPONSE_BYTES, call_http, expand_variables
from dialogue.brain.python_tools import ToolFailed
from dialogue.platform.logs import QUIET_LOGGERS, configure_logging
from dialogue.platform.settings import Settings
from dialogue.platform.tool_config import HttpTool, McpServer

FIFTY_MB = 50 * 1024 * 1024


class Service(BaseHTTPRequestHandler):
    """A shop's API: what each request asked for is kept in `seen`."""

    seen: list[dict[str, Any]] = []
    sent_bytes = 0

    def do_GET(self) -> None:
        Service.seen.append({"method": "GET", "path": self.path, "headers": dict(self.headers)})
        if self.path.startswith("/big"):
            self._flood()
            return
        self._answer({"path": self.path})

    def do_POST(self) -> None:
        body = orjson.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Service.seen.append({"method": "POST", "path": self.path, "body": body})
        self._answer({"ok": True})

    def _answer(self, payload: dict[str, Any]) -> None:
        data = orjson.dumps(payload)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _flood(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(FIFTY_MB))
        self.end_headers()
        chunk = b"x" * 65536
        try:
            for _ in range(FIFTY_MB // len(chunk)):
                self.wfile.write(chunk)
                Service.sent_bytes += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the caller stopped reading

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def service() -> Iterator[str]:
    Service.seen, Service.sent_bytes = [], 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), Service)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def tool(url: str, **fields: Any) -> HttpTool:
    return HttpTool(url=url, private_network=True, **fields)


def call(http: HttpTool, arguments: dict[str, Any], declared: set[str] | None = None) -> Any:
    return call_http(
        http, arguments, "key-1", 5, declared=declared if declared is not None else set(arguments)
    )


@pytest.mark.parametrize("steered", ["..", ".", "a/../../status", "x\\..\\status", ""])
def test_a_path_value_cannot_move_the_path(service: str, steered: str) -> None:
    status = tool(f"{service}/orders/{{id}}/status", method="GET")
    with pytest.raises(ToolFailed, match="cannot stand in the URL's path"):
        call(status, {"id": steered})
    assert Service.seen == []  # nothing reached the service, the secret headers least of all
    assert call(status, {"id": "NW-105.733 b"}) == {"path": "/orders/NW-105.733%20b/status"}


@pytest.mark.parametrize(
    "url",
    [
        "http://{host}/orders",
        "http://shop.example:{port}/orders",
        "http://user@shop.example/",
        "file:///etc/passwd",
    ],
)
def test_the_host_and_port_are_the_templates_own(url: str) -> None:
    with pytest.raises(ValidationError):
        HttpTool(url=url)


@pytest.mark.parametrize(
    "url",
    ["http://169.254.169.254/latest/meta-data/", "http://127.0.0.1:9/", "http://10.0.0.8/", "http://[::1]/"],
)
def test_a_private_address_is_refused_unless_the_bot_allows_it(url: str) -> None:
    with pytest.raises(ToolFailed, match="private address"):
        call_http(HttpTool(url=url, method="GET"), {}, "key-1", 5, declared=set())


def test_a_private_address_allowed_by_the_bot_is_called(service: str) -> None:
    assert call(tool(f"{service}/ping", method="GET"), {}) == {"path": "/ping"}
    with pytest.raises(ToolFailed, match="private address"):
        call(HttpTool(url=f"{service}/ping", method="GET"), {})
    assert len(Service.seen) == 1


def test_only_declared_arguments_are_sent(service: str) -> None:
    callback = tool(f"{service}/callbacks")
    call(callback, {"topic": "returns", "refund_to": "attacker-iban", "admin": True}, declared={"topic"})
    lookup = tool(f"{service}/orders", method="GET")
    call(lookup, {"order": "NW-1", "all_customers": "yes"}, declared={"order"})
    assert Service.seen[0]["body"] == {"topic": "returns"}
    assert Service.seen[1]["path"] == "/orders?order=NW-1"


def test_a_header_reads_only_tool_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIALOGUE_PAYLOAD_KEYS", "the-keys")
    monkeypatch.setenv("TOOL_SECRET_CRM", "crm-token")
    for owner in (
        lambda h: HttpTool(url="https://crm.example/x", headers=h),
        lambda h: McpServer(name="crm", url="https://crm.example/mcp", headers=h),
    ):
        with pytest.raises(ValidationError, match="only variables named TOOL_SECRET_"):
            owner({"Authorization": "Bearer ${DIALOGUE_PAYLOAD_KEYS}"})
    with pytest.raises(ToolFailed, match="not a TOOL_SECRET_"):
        expand_variables("${DIALOGUE_PAYLOAD_KEYS}")
    assert expand_variables("Bearer ${TOOL_SECRET_CRM}") == "Bearer crm-token"


def test_a_50_mb_answer_is_cut_and_the_rest_never_read(service: str) -> None:
    result = call(tool(f"{service}/big", method="GET"), {})
    assert isinstance(result, str) and result.endswith(
        f"[cut: the answer was longer than {MAX_RESPONSE_BYTES} bytes]"
    )
    assert len(result) < MAX_RESPONSE_BYTES + 100
    assert Service.sent_bytes < FIFTY_MB  # the worker hung up long before the end


@pytest.fixture
def worker_logs() -> Iterator[list[logging.LogRecord]]:
    """The records a worker's logging (as `dialogue worker` configures it, at INFO) lets through."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level, {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    configure_logging(Settings(log_level="INFO", log_message_text=False), "worker")
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    root.addHandler(Keep())
    yield records
    root.handlers[:], root.level = saved[0], saved[1]
    for name, level in saved[2].items():
        logging.getLogger(name).setLevel(level)


def test_a_tool_call_leaves_no_url_in_the_logs(service: str, worker_logs: list[logging.LogRecord]) -> None:
    """httpx logs each request's URL, query and all, at INFO: a tool's arguments would be in the log."""
    lookup = tool(f"{service}/customers", method="GET")
    assert call(lookup, {"email": "anna.k@mailbox.org"}) == {"path": "/customers?email=anna.k%40mailbox.org"}
    lines = [record.getMessage() for record in worker_logs]
    assert not [line for line in lines if "/customers" in line or "anna.k" in line], lines


def test_the_request_goes_to_the_address_that_was_checked(service: str) -> None:
    """DNS rebinding: a name that answers a public address to the check and a private one to the request.
    The name is resolved once, and the request made to the address checked (the service still gets the
    name as its Host). The resolver stands in for a DNS server the attacker runs (none can run here)."""
    port = urlsplit(service).port
    asked: list[str] = []

    def rebinding(host: str) -> list[str]:
        asked.append(host)
        return ["127.0.0.1"] if len(asked) == 1 else ["169.254.169.254"]

    ping = tool(f"http://shop.test:{port}/ping", method="GET")
    assert call_http(ping, {}, "key-1", 5, declared=set(), resolve=rebinding) == {"path": "/ping"}
    assert asked == ["shop.test"] and Service.seen[0]["headers"]["Host"] == f"shop.test:{port}"


def test_a_name_that_resolves_to_a_private_address_is_refused() -> None:
    metadata = HttpTool(url="http://metadata.test/latest/meta-data/", method="GET")
    with pytest.raises(ToolFailed, match="private address"):
        call_http(
            metadata, {}, "key-1", 5, declared=set(), resolve=lambda host: ["8.8.8.8", "169.254.169.254"]
        )
