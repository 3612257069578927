"""The HTTP layer: `create_app` builds the versioned (`/v1`) FastAPI app.

Imported on first use: `api.schemas` (the HTTP contract's models, which `dialogue.client` speaks) loads
without FastAPI, Temporal or the store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from api.app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from api.app import create_app

        return create_app
    raise AttributeError(name)
