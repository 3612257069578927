"""The web pages, the chat (`/chat`) and the operator console (`/console`): static files served
beside the API, no build step, no key needed to load them.

The pages ask for an API key and send it to `/v1` like any other client; nothing here is behind
authentication, so nothing here may reveal more than the deployment's public layout (except the
development key, to the machine a local development stack runs on).
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.types import Scope

from api.deps import SettingsDep, local_development
from dialogue.platform.temporal import WORKFLOW_ID_PREFIX

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
CHAT_PAGE = STATIC_DIR / "chat" / "index.html"
CONSOLE_PAGE = STATIC_DIR / "console" / "index.html"

# Module scripts load only with a JavaScript MIME type; some systems' tables (the Windows registry)
# map `.js` to text/plain, and the browser would then refuse chat.js.
mimetypes.add_type("text/javascript", ".js")

# Scripts, styles and requests from this origin only: the key sits in localStorage, so an injected
# script must have nowhere to come from and nowhere to send it.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}

# The widget runs on other sites' pages: its loader, its module and the shared modules and styles it
# imports are fetched cross-origin (module scripts in CORS mode). Public code, fetched without
# credentials: any origin may load it. What it then asks of `/v1` is under the API's own CORS list.
CROSS_ORIGIN_HEADERS = {"Access-Control-Allow-Origin": "*", "Cross-Origin-Resource-Policy": "cross-origin"}
CROSS_ORIGIN_FOLDERS = ("widget/", "shared/")
WIDGET_LOADER = STATIC_DIR / "widget" / "loader.js"


class PageFiles(StaticFiles):
    """The pages' static files; the widget's and the shared ones loadable from any origin."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        if path.startswith(CROSS_ORIGIN_FOLDERS):
            response.headers.update(CROSS_ORIGIN_HEADERS)
        return response


router = APIRouter(include_in_schema=False)
static_files = PageFiles(directory=STATIC_DIR)
"""Mounted at `/static` by the app: the page's scripts and styles."""


class PageConfig(BaseModel):
    """What the pages need beside the API: where the Temporal Web UI is, and the development key."""

    temporal_ui_url: str
    namespace: str
    workflow_id_prefix: str
    """A conversation's workflow id is this, its tenant, `/` and its id."""
    development_key: str | None = None
    """The key `dialogue up` printed, for the pages to pre-fill: only on a development stack that
    listens on loopback, to a browser on the same machine that calls it by a loopback name. Anyone
    with a shell on that machine can read it here: a development convenience, never in production."""


@router.get("/")
async def redirect_to_chat() -> RedirectResponse:
    """The chat page is the API's front page."""
    return RedirectResponse("/chat", status_code=307)


@router.get("/favicon.ico")
async def read_favicon() -> Response:
    """No icon: an empty answer instead of a 404 in every page's console."""
    return Response(status_code=204)


@router.get("/widget.js")
async def read_widget_loader() -> FileResponse:
    """The chat widget's one script tag for any site (`docs/channels.md`)."""
    return FileResponse(
        WIDGET_LOADER,
        media_type="text/javascript",
        headers={**CROSS_ORIGIN_HEADERS, "Cache-Control": "public, max-age=300"},
    )


@router.get("/chat")
async def read_chat_page() -> FileResponse:
    """The web chat page."""
    return FileResponse(CHAT_PAGE, media_type="text/html", headers=PAGE_HEADERS)


@router.get("/console")
async def read_console_page() -> FileResponse:
    """The operator console: conversations, their lineage and live state, takeover, charts."""
    return FileResponse(CONSOLE_PAGE, media_type="text/html", headers=PAGE_HEADERS)


@router.get("/config.json")
async def read_page_config(request: Request, settings: SettingsDep) -> PageConfig:
    """Where the Temporal Web UI is, for the links to a conversation's workflow; the development key."""
    embedded = f"http://127.0.0.1:{settings.temporal_ui_port}"  # where `dialogue up` starts it
    return PageConfig(
        temporal_ui_url=(settings.temporal_ui_url or embedded).rstrip("/"),
        namespace=settings.temporal_namespace,
        workflow_id_prefix=WORKFLOW_ID_PREFIX,
        development_key=request.app.state.api_key if local_development(request) else None,
    )
