"""How a bot declares its agent's tools (`agent.tools`, `agent.mcp_servers` in bot.yaml) and what is checked
when it is loaded: an HTTP tool's scheme, host and port are its template's own, a header reads only
`TOOL_SECRET_…` variables, an MCP server has one transport. How the tools are called is
`dialogue.brain.agent`'s."""

from __future__ import annotations

import re
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, field_validator, model_validator

SECRET_PREFIX = "TOOL_SECRET_"
"""The only environment variables a tool's header may read (`${TOOL_SECRET_CRM}`): the worker's own
settings, payload keys and model key among them, never reach a third party."""
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def check_secrets(headers: dict[str, str], owner: str) -> dict[str, str]:
    """Headers read only `${TOOL_SECRET_…}` variables."""
    for name, value in headers.items():
        for variable in _VARIABLE.findall(value):
            if not variable.startswith(SECRET_PREFIX):
                raise ValueError(
                    f"{owner}: header {name} reads ${{{variable}}}: only variables named {SECRET_PREFIX}… may be sent"
                )
    return headers


class HttpTool(BaseModel):
    """How an HTTP tool is called: `{name}` in the URL's path is the argument of that name, a whole path
    segment's worth (URL-encoded; a value with `/` or made of dots is refused); the other declared
    arguments go in the query (GET, DELETE) or as the JSON body, and nothing else is sent. The scheme, host
    and port are the template's own: no placeholder there. `${TOOL_SECRET_NAME}` in a header is that
    environment variable, read when the call is made: secrets stay out of the bot file."""

    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    url: str
    headers: dict[str, str] = {}
    private_network: bool = False
    """Allow a loopback, private or link-local address (a service beside the worker): refused unless set."""

    @field_validator("url")
    @classmethod
    def _fixed_origin(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"{url}: an HTTP tool's URL is absolute, http or https")
        if any(mark in parts.netloc for mark in "{}@"):
            raise ValueError(f"{url}: the host and port are fixed: no placeholder or user info there")
        if "{" in parts.query or "{" in parts.fragment:
            raise ValueError(f"{url}: placeholders stand in the path only")
        return url

    @field_validator("headers")
    @classmethod
    def _secrets(cls, headers: dict[str, str]) -> dict[str, str]:
        return check_secrets(headers, "an HTTP tool")


class ToolSpec(BaseModel):
    """A tool the agent may call: what the model is told of it, and how it is run."""

    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str
    parameters: dict[str, Any] = {"type": "object", "properties": {}}
    """A JSON schema of the arguments; the model's arguments are checked against it before any call."""
    kind: Literal["python", "http", "mcp", "memory"] = "python"
    """`python`: a function of the bot's `python_tools` file (`dialogue.brain.python_tools`); `http`: a request
    (`http`); `mcp`: a tool an MCP server lists (not declared here: see `agent.mcp_servers`); `memory`: the
    built-in `remember` and `forget` (not declared here either: see `agent.memory`)."""
    http: HttpTool | None = None
    server: str | None = None
    """For an MCP tool: the server that lists it."""
    function: str | None = None
    """The registered function's name, when it differs from the tool's."""
    timeout_seconds: float = Field(default=10, gt=0)
    """One attempt of a call at most."""
    attempts: int = Field(default=3, ge=1)
    """Attempts of a call at most (retried by Temporal with back-off)."""
    approval: Literal["none", "agent", "user"] = "none"
    """Who must approve a call before it runs: `agent` (a person with the agent scope, in the console),
    `user` (the user, in the chat), or no one."""

    @model_validator(mode="after")
    def _how_it_runs(self) -> ToolSpec:
        if self.kind == "http" and self.http is None:
            raise ValueError(f"tool {self.name}: kind http needs `http` (method, url, headers)")
        return self


class McpServer(BaseModel):
    """An MCP server whose tools the agent may call: started over stdio (`command`) or reached over
    streamable HTTP (`url`). Its tools are listed by an activity (cached per worker for `list_seconds`)
    and offered to the model as the allow-list says; each call is an activity."""

    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,32}$")
    command: list[str] | None = None
    """stdio: the command that starts the server; `{python}` is the worker's Python, `{bot_dir}` the bot's
    folder."""
    url: str | None = None
    """streamable HTTP: the server's endpoint, e.g. `http://127.0.0.1:8765/mcp`."""
    headers: dict[str, str] = {}
    """For `url`: sent with each request; `${TOOL_SECRET_NAME}` is that environment variable."""
    allow: list[str] = []
    """The tools offered to the model, by name; `["*"]`: all the server lists. None unless listed."""
    approval: Literal["none", "agent", "user"] = "none"
    """Who approves a call to any of its tools first."""
    timeout_seconds: float = Field(default=10, gt=0)
    attempts: int = Field(default=3, ge=1)
    list_seconds: float = Field(default=300, ge=0)
    """How long a worker keeps a server's tool list before it asks again."""
    accept_changes: bool = False
    """Each tool's name, description and schema are pinned when first listed (`mcp_tool_pin` in the store);
    a tool the server changes later is not offered, unless this is set: then the change is pinned (and
    logged). Set it for the deploy that takes a server's new version, and unset it after."""

    @field_validator("headers")
    @classmethod
    def _secrets(cls, headers: dict[str, str]) -> dict[str, str]:
        return check_secrets(headers, "an MCP server")

    @model_validator(mode="after")
    def _one_transport(self) -> McpServer:
        if (self.command is None) == (self.url is None):
            raise ValueError(f"MCP server {self.name}: set `command` (stdio) or `url` (streamable HTTP)")
        return self

    def allows(self, tool: str) -> bool:
        return "*" in self.allow or tool in self.allow
