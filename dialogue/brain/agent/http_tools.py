"""HTTP tools: a bot's `kind: http` tool is one request, made with httpx.

The call's idempotency key goes in the `Idempotency-Key` header, the same on every attempt: a service that
honours it does its effect once however often Temporal retries the call. A 4xx answer is the tool's result
(the model reads what was wrong, nothing is retried); a 408, 429, 5xx answer or a network error fails the
attempt, and Temporal retries it with back-off up to the tool's `attempts`.
"""

from __future__ import annotations

import os
import re
import string
from typing import Any
from urllib.parse import quote

import httpx

from dialogue.brain.python_tools import ToolFailed
from dialogue.platform.bot import HttpTool

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
RETRIED_STATUSES = frozenset({408, 429})
MAX_ERROR_CHARS = 500


class ToolUnavailable(Exception):
    """The service did not answer the call this time (retried)."""


def call_http(http: HttpTool, arguments: dict[str, Any], idempotency_key: str, timeout: float) -> Any:
    """Make the request; its JSON (or text) is the result."""
    in_url = {name for _, name, _, _ in string.Formatter().parse(http.url) if name}
    missing = in_url - arguments.keys()
    if missing:
        raise ToolFailed(f"missing arguments for the URL: {', '.join(sorted(missing))}")
    url = http.url.format(**{name: quote(str(arguments[name]), safe="") for name in in_url})
    rest = {name: value for name, value in arguments.items() if name not in in_url}
    headers = {name: expand_variables(value) for name, value in http.headers.items()}
    headers["Idempotency-Key"] = idempotency_key
    in_query = http.method in ("GET", "DELETE")
    try:
        response = httpx.request(
            http.method,
            url,
            params={k: v if isinstance(v, str) else str(v) for k, v in rest.items()} if in_query else None,
            json=None if in_query else rest,
            headers=headers,
            timeout=timeout,
        )
    except httpx.TransportError as err:
        raise ToolUnavailable(f"{http.method} {_origin(url)}: {err.__class__.__name__}") from err
    if response.status_code >= 500 or response.status_code in RETRIED_STATUSES:
        raise ToolUnavailable(f"{http.method} {_origin(url)} answered {response.status_code}")
    if response.status_code >= 400:
        raise ToolFailed(f"the service answered {response.status_code}: {response.text[:MAX_ERROR_CHARS]}")
    if "json" in response.headers.get("content-type", ""):
        return response.json()
    return response.text


def expand_variables(value: str) -> str:
    """`${NAME}` replaced by the environment variable NAME (unset: `ToolFailed`, without any value)."""

    def variable(match: re.Match[str]) -> str:
        found = os.environ.get(match.group(1))
        if found is None:  # said to the model without the value: a configuration error, not retried
            raise ToolFailed(f"the tool is not configured: ${{{match.group(1)}}} is not set on the worker")
        return found

    return _ENV.sub(variable, value)


def _origin(url: str) -> str:
    """Scheme, host and path, without the query: what a log or the model may see of the URL."""
    return url.split("?", 1)[0]
