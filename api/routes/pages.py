"""The web chat page: static files served beside the API, no build step, no key needed to load them.

The page itself asks for an API key and sends it to `/v1` like any other client; nothing here is
behind authentication, so nothing here may reveal more than the deployment's public layout.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from api.deps import SettingsDep
from dialogue.temporal import WORKFLOW_ID_PREFIX

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
CHAT_PAGE = STATIC_DIR / "chat" / "index.html"

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

router = APIRouter(include_in_schema=False)
static_files = StaticFiles(directory=STATIC_DIR)
"""Mounted at `/static` by the app: the page's scripts and styles."""


class ChatConfig(BaseModel):
    """What the page needs to link a conversation to the Temporal Web UI."""

    temporal_ui_url: str
    namespace: str
    workflow_id_prefix: str
    """A conversation's workflow id is this, its tenant, `/` and its id."""


@router.get("/")
async def redirect_to_chat() -> RedirectResponse:
    """The chat page is the API's front page."""
    return RedirectResponse("/chat", status_code=307)


@router.get("/chat")
async def read_chat_page() -> FileResponse:
    """The web chat page."""
    return FileResponse(CHAT_PAGE, media_type="text/html", headers=PAGE_HEADERS)


@router.get("/chat/config.json")
async def read_chat_config(settings: SettingsDep) -> ChatConfig:
    """Where the Temporal Web UI is, for the debug panel's link."""
    embedded = f"http://127.0.0.1:{settings.temporal_ui_port}"  # where `dialogue up` starts it
    return ChatConfig(
        temporal_ui_url=(settings.temporal_ui_url or embedded).rstrip("/"),
        namespace=settings.temporal_namespace,
        workflow_id_prefix=WORKFLOW_ID_PREFIX,
    )
