"""The app factory: builds the FastAPI app and its collaborators, nothing else."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from temporalio.client import Client

from api.errors import install_error_handlers
from api.limits import BodySizeLimit
from api.routes import conversations, handoff, health, knowledge, nlu
from dialogue.db import get_engine, init_db
from dialogue.settings import Settings, get_settings
from dialogue.temporal import connect


def create_app(settings: Settings | None = None, *, temporal: Client | None = None) -> FastAPI:
    """The API. `temporal` injects a connected client (tests); otherwise one connects lazily at start-up."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.api_key = settings.resolve_api_key()
        app.state.engine = get_engine(settings.resolved_database_url)
        init_db(app.state.engine)
        # Lazy: the API starts, and answers 503, while Temporal is still down.
        app.state.temporal = temporal or await connect(settings, lazy=True)
        yield

    app = FastAPI(
        title="Dialogue Engine",
        version="1",
        lifespan=lifespan,
    )
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    install_error_handlers(app)
    v1 = APIRouter(prefix="/v1")
    v1.include_router(conversations.router)
    v1.include_router(handoff.router)
    v1.include_router(nlu.router)
    v1.include_router(knowledge.router)
    app.include_router(v1)
    app.include_router(health.router)
    return app
