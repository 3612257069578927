"""HTTP tools: a bot's `kind: http` tool is one request, made with httpx.

The call's idempotency key goes in the `Idempotency-Key` header, the same on every attempt: a service that
honours it does its effect once however often Temporal retries the call. The conversation's verified end
user, when it has one, goes in `X-End-User` (a declared header of that name is replaced, never trusted): the
service acts for that user only, as far as it trusts the bot's own credentials in the tool's headers. A 4xx answer is the tool's result
(the model reads what was wrong, nothing is retried); a 408, 429, 5xx answer or a network error fails the
attempt, and Temporal retries it with back-off up to the tool's `attempts`.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import string
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import orjson

from dialogue.brain.python_tools import ToolFailed
from dialogue.platform.bot import SECRET_PREFIX, HttpTool

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
RETRIED_STATUSES = frozenset({408, 429})
MAX_ERROR_CHARS = 500
END_USER_HEADER = "X-End-User"
MAX_RESPONSE_BYTES = 1_000_000
"""What of an answer is read: past it the call stops reading and the model gets the start, said cut."""


class ToolUnavailable(Exception):
    """The service did not answer the call this time (retried)."""


def call_http(
    http: HttpTool,
    arguments: dict[str, Any],
    idempotency_key: str,
    timeout: float,
    *,
    declared: set[str],
    user: str | None = None,
) -> Any:
    """Make the request; its JSON (or text) is the result. Only the `declared` arguments are sent; `user`,
    the conversation's verified end user, in the `X-End-User` header."""
    in_url = {name for _, name, _, _ in string.Formatter().parse(http.url) if name}
    missing = in_url - arguments.keys()
    if missing:
        raise ToolFailed(f"missing arguments for the URL: {', '.join(sorted(missing))}")
    url = http.url.format(**{name: path_segment(name, arguments[name]) for name in in_url})
    refuse_private(url, allowed=http.private_network)
    rest = {name: value for name, value in arguments.items() if name not in in_url and name in declared}
    headers = {name: expand_variables(value) for name, value in http.headers.items()}
    headers["Idempotency-Key"] = idempotency_key
    # Ours alone to set: a header of that name the bot declares (in any case) is dropped, so that a service
    # never reads a user from anywhere but the verified identity.
    headers = {name: value for name, value in headers.items() if name.lower() != END_USER_HEADER.lower()}
    if user is not None:
        headers[END_USER_HEADER] = user
    in_query = http.method in ("GET", "DELETE")
    try:
        with httpx.stream(
            http.method,
            url,
            params={k: v if isinstance(v, str) else str(v) for k, v in rest.items()} if in_query else None,
            json=None if in_query else rest,
            headers=headers,
            timeout=timeout,
        ) as response:
            body, cut = _read_capped(response)
    except httpx.TransportError as err:
        raise ToolUnavailable(f"{http.method} {_origin(url)}: {err.__class__.__name__}") from err
    if response.status_code >= 500 or response.status_code in RETRIED_STATUSES:
        raise ToolUnavailable(f"{http.method} {_origin(url)} answered {response.status_code}")
    text = body.decode(response.encoding or "utf-8", errors="replace")
    if response.status_code >= 400:
        raise ToolFailed(f"the service answered {response.status_code}: {text[:MAX_ERROR_CHARS]}")
    if cut:
        return f"{text}\n[cut: the answer was longer than {MAX_RESPONSE_BYTES} bytes]"
    if "json" in response.headers.get("content-type", ""):
        return orjson.loads(body)
    return text


def path_segment(name: str, value: Any) -> str:
    """An argument as one path segment: never a `/`, and never `.` or `..` (which would move the path)."""
    text = str(value)
    if not text or "/" in text or "\\" in text or set(text) <= {"."}:
        raise ToolFailed(f"{name}: {text!r} cannot stand in the URL's path")
    return quote(text, safe="")


def refuse_private(url: str, *, allowed: bool) -> None:
    """A loopback, private, link-local or reserved address (the host's, or any its name resolves to) is
    refused unless the tool allows one (`private_network`): a model cannot make the worker reach the
    cloud's metadata service or a service beside it."""
    if allowed:
        return
    host = urlsplit(url).hostname or ""
    try:
        addresses = {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
    except OSError as err:
        raise ToolUnavailable(f"{_origin(url)}: {host} does not resolve") from err
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if not ip.is_global or ip.is_multicast:
            raise ToolFailed(f"{host} is a private address ({ip}): the tool may not call it")


def _read_capped(response: httpx.Response) -> tuple[bytes, bool]:
    """The answer's first MAX_RESPONSE_BYTES, and whether there was more (the rest is never read)."""
    body = bytearray()
    for chunk in response.iter_bytes():
        body += chunk
        if len(body) > MAX_RESPONSE_BYTES:
            return bytes(body[:MAX_RESPONSE_BYTES]), True
    return bytes(body), False


def expand_variables(value: str) -> str:
    """`${TOOL_SECRET_NAME}` replaced by that environment variable (unset: `ToolFailed`, without any value);
    any other variable is refused (the bot's validation refuses it first)."""

    def variable(match: re.Match[str]) -> str:
        name = match.group(1)
        if not name.startswith(SECRET_PREFIX):
            raise ToolFailed(f"the tool is not configured: ${{{name}}} is not a {SECRET_PREFIX}… variable")
        found = os.environ.get(name)
        if found is None:  # said to the model without the value: a configuration error, not retried
            raise ToolFailed(f"the tool is not configured: ${{{name}}} is not set on the worker")
        return found

    return _ENV.sub(variable, value)


def _origin(url: str) -> str:
    """Scheme, host and path, without the query: what a log or the model may see of the URL."""
    return url.split("?", 1)[0]
