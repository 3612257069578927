"""The HTTP layer: `create_app` builds the versioned (`/v1`) FastAPI app."""

from api.app import create_app

__all__ = ["create_app"]
