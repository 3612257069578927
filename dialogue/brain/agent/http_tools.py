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
from collections.abc import Callable
from typing import Any, NamedTuple
from urllib.parse import quote, urlsplit

import httpx
import orjson

from dialogue.brain.python_tools import ToolFailed
from dialogue.platform.tool_config import SECRET_PREFIX, HttpTool

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
    resolve: Callable[[str], list[str]] | None = None,
    user: str | None = None,
) -> Any:
    """Make the request; its JSON (or text) is the result. Only the `declared` arguments are sent; `user`,
    the conversation's verified end user, in the `X-End-User` header. `resolve` (the system's resolver by
    default) is asked once for the host's addresses."""
    in_url = {name for _, name, _, _ in string.Formatter().parse(http.url) if name}
    missing = in_url - arguments.keys()
    if missing:
        raise ToolFailed(f"missing arguments for the URL: {', '.join(sorted(missing))}")
    url = http.url.format(**{name: path_segment(name, arguments[name]) for name in in_url})
    targets = pinned(url, allowed=http.private_network, resolve=resolve)
    rest = {name: value for name, value in arguments.items() if name not in in_url and name in declared}
    headers = {name: expand_variables(value) for name, value in http.headers.items()}
    headers["Idempotency-Key"] = idempotency_key
    # Ours alone to set: a header of that name the bot declares (in any case) is dropped, so that a service
    # never reads a user from anywhere but the verified identity.
    headers = {name: value for name, value in headers.items() if name.lower() != END_USER_HEADER.lower()}
    if user is not None:
        headers[END_USER_HEADER] = user
    query = in_query(http)
    params = {k: v if isinstance(v, str) else str(v) for k, v in rest.items()} if query else None
    # No proxy from the environment: the request goes to an address that was checked, and nowhere else.
    with httpx.Client(timeout=timeout, trust_env=False) as client:
        for n, target in enumerate(targets):
            try:
                with client.stream(
                    http.method,
                    target.url,
                    params=params,
                    json=None if query else rest,
                    headers=headers | {"Host": target.host_header},
                    extensions=target.extensions,
                ) as response:
                    body, cut = _read_capped(response)
                break
            except httpx.ConnectError as err:
                # The next address (IPv4 after IPv6, say), as a client of the resolver would try it.
                if n + 1 == len(targets):
                    raise ToolUnavailable(f"{http.method} {_origin(url)}: {err.__class__.__name__}") from err
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


def in_query(http: HttpTool) -> bool:
    """Whether the arguments go in the query (GET, DELETE) rather than as the JSON body."""
    return http.method in ("GET", "DELETE")


def path_segment(name: str, value: Any) -> str:
    """An argument as one path segment: never a `/`, and never `.` or `..` (which would move the path)."""
    text = str(value)
    if not text or "/" in text or "\\" in text or set(text) <= {"."}:
        raise ToolFailed(f"{name}: {text!r} cannot stand in the URL's path")
    return quote(text, safe="")


class Target(NamedTuple):
    """Where a request goes: the URL with the checked address in place of the name, and what keeps the
    name for the service (the Host header, and for https the TLS server name, checked against its
    certificate)."""

    url: str
    host_header: str
    extensions: dict[str, Any]


def resolve_host(host: str) -> list[str]:
    """The addresses the system's resolver gives for `host` (an address gives itself)."""
    return [
        str(info[4][0]).split("%", 1)[0] for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    ]


def pinned(url: str, *, allowed: bool, resolve: Callable[[str], list[str]] | None = None) -> list[Target]:
    """The host's name resolved once; a loopback, private, link-local or reserved address among the answers
    is refused unless the tool allows one (`private_network`): a model cannot make the worker reach the
    cloud's metadata service or a service beside it. The request is then made to these addresses, not to
    the name: a name that resolves elsewhere the second time it is asked (DNS rebinding) is never asked a
    second time."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        addresses = list(dict.fromkeys((resolve or resolve_host)(host)))
    except OSError as err:
        raise ToolUnavailable(f"{_origin(url)}: {host} does not resolve") from err
    if not addresses:
        raise ToolUnavailable(f"{_origin(url)}: {host} does not resolve")
    targets: list[Target] = []
    for address in addresses:
        ip = ipaddress.ip_address(address)
        if not allowed and (not ip.is_global or ip.is_multicast):
            raise ToolFailed(f"{host} is a private address ({ip}): the tool may not call it")
        literal = f"[{ip}]" if ip.version == 6 else str(ip)
        netloc = f"{literal}:{parts.port}" if parts.port is not None else literal
        extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
        targets.append(Target(parts._replace(netloc=netloc).geturl(), parts.netloc, extensions))
    return targets


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
