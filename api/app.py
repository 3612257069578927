"""The app factory: builds the FastAPI app and its collaborators, nothing else."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from temporalio.client import Client

from api import openapi
from api.deps import authentication_blocks, authorize_codec, get_principal
from api.errors import install_error_handlers
from api.feeds import EventFeeds
from api.limits import BodyLimits, RateLimiter, StreamSlots, TurnAdmission, outermost
from api.policies import BotPolicies
from api.request_telemetry import RequestTelemetry, metrics_router, turn_spans_named_at_once
from api.routes import (
    approvals,
    bots,
    channels,
    conversations,
    deliveries,
    end_users,
    handoff,
    health,
    keys,
    knowledge,
    lineage,
    me,
    memory,
    nlu,
    pages,
    reminders,
    users,
)
from api.routes.codec import codec_cors, codec_router
from dialogue.platform import canary_guard
from dialogue.platform.bot import load_bot
from dialogue.platform.bot_versions import folder_ref
from dialogue.platform.codec import EncryptionCodec
from dialogue.platform.db import get_engine, init_db_if_reachable
from dialogue.platform.releases import ReleaseCache
from dialogue.platform.settings import Settings, get_settings
from dialogue.platform.telemetry import exported, temporal_interceptors, tracer_provider
from dialogue.platform.temporal import connect
from dialogue.security.tokens import EndUserTokens, TokenVerifier

log = logging.getLogger("dialogue.api")


def create_app(
    settings: Settings | None = None,
    *,
    temporal: Client | None = None,
    tracing: TracerProvider | None = None,
) -> FastAPI:
    """The API. `temporal` injects a connected client (tests); otherwise one connects lazily at start-up.
    `tracing` replaces the tracer provider settings would build (tests collect spans in memory)."""
    settings = settings or get_settings()
    # Injected (tests) or exported: trace the Temporal calls too. Otherwise the request's span only
    # gives the response and its log lines a trace id.
    provider = tracing or tracer_provider(settings, "api")
    traced_calls = tracing or exported(settings, provider)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.api_key = settings.resolve_api_key()
        app.state.engine = get_engine(settings.resolved_database_url)
        init_db_if_reachable(app.state.engine)
        app.state.token_verifier = TokenVerifier(settings) if TokenVerifier.configured(settings) else None
        end_user_secret = settings.resolve_end_user_token_secret()
        app.state.end_user_tokens = EndUserTokens(end_user_secret) if end_user_secret else None
        app.state.rate_limiter = RateLimiter(settings.rate_limit_per_second, settings.rate_limit_burst)
        app.state.end_user_rate_limiter = RateLimiter(
            settings.end_user_rate_limit_per_second, settings.end_user_rate_limit_burst
        )
        app.state.confirmed_keys = {}  # api/deps.py: keys accepted during a store outage
        app.state.readiness = health.ReadinessCache(settings.readiness_cache_seconds)
        app.state.stream_slots = StreamSlots(
            per_key=settings.max_streams_per_key, per_tenant=settings.max_streams_per_tenant
        )
        app.state.event_feeds = EventFeeds(app.state.engine)
        bot = load_bot(settings.bot_path)
        app.state.releases = releases = ReleaseCache(app.state.engine, folder_ref(settings.bot_path))
        await asyncio.to_thread(releases.refresh)
        app.state.policies = BotPolicies(settings, bot, releases)
        refreshing = asyncio.create_task(_refresh_releases(releases, settings.release_cache_seconds))
        guarding = (
            asyncio.create_task(_guard_canaries(app.state.engine, releases, settings))
            if settings.canary_guard_seconds > 0
            else None
        )
        # Lazy: the API starts, and answers 503, while Temporal is still down.
        app.state.temporal = temporal or await connect(
            settings, lazy=True, interceptors=temporal_interceptors(traced_calls)
        )
        yield
        refreshing.cancel()
        if guarding is not None:
            guarding.cancel()
        await app.state.event_feeds.close()

    app = FastAPI(
        title="Dialogue Engine",
        version="1",
        lifespan=lifespan,
        # Traced by OpenTelemetry's instrumentation, below. FastAPI's own would defer to it, but asks the
        # global providers whether it is on for every request (bench/flood.py --profile).
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.add_middleware(BodyLimits, max_bytes=settings.max_body_bytes, read_seconds=settings.body_read_seconds)
    cors: dict[str, Any] | None = (
        {
            # The widget's sites call the API from their pages as well.
            "allow_origins": [*settings.cors_origins, *settings.widget_origins],
            "allow_methods": ["GET", "POST", "DELETE"],
            "allow_headers": ["Authorization", "Content-Type", "Idempotency-Key", "Last-Event-ID"],
        }
        if settings.cors_origins or settings.widget_origins  # closed unless origins are configured
        else None
    )
    if cors is not None:
        app.add_middleware(CORSMiddleware, **cors)
    install_error_handlers(app)
    openapi.install(app, settings)
    v1 = APIRouter(prefix="/v1")
    v1.include_router(conversations.router)
    v1.include_router(handoff.router)
    v1.include_router(approvals.router)
    v1.include_router(lineage.router)
    v1.include_router(keys.router)
    v1.include_router(end_users.router)
    v1.include_router(users.router)
    v1.include_router(memory.router)
    v1.include_router(me.router)
    v1.include_router(nlu.router)
    v1.include_router(knowledge.router)
    v1.include_router(bots.router)
    v1.include_router(channels.router)
    v1.include_router(deliveries.router)
    v1.include_router(reminders.router)
    v1.include_router(reminders.events)
    app.include_router(v1)
    app.include_router(health.router)
    app.include_router(metrics_router)
    app.include_router(pages.router)  # the web chat page, open: it asks for a key itself
    app.mount("/static", pages.static_files, name="static")
    payload_keys = settings.payload_codec_keys()
    if payload_keys is not None:
        # The Web UI's remote codec: operators read decrypted conversations there.
        app.include_router(codec_router(EncryptionCodec(payload_keys), authorize_codec))
        codec_cors(app, settings.ui_origins)  # added late, so it answers the UI's preflight first
    app.add_middleware(RequestTelemetry)
    # Outermost: the request's span is current in every middleware and route below it.
    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=provider,
        excluded_urls="/healthz,/readyz,/metrics",
        # A span per request, not three more for sending its reply and receiving its body.
        exclude_spans=["receive", "send"],
    )
    # Around all of it: a turn's caller is authenticated and the turn admitted before its body is read, and
    # a turn refused costs no trace, no log line and no routing (a flood is refused cheaply).
    outermost(
        app,
        lambda inner: TurnAdmission(
            turn_spans_named_at_once(inner),
            authenticate=get_principal,
            blocks=authentication_blocks,
            limit=settings.max_turns_in_flight,
            budget_seconds=settings.turn_queue_budget_seconds,
            floor=settings.turn_admission_floor,
            share_floor=settings.turn_tenant_share_floor,
            cors=cors,
        ),
    )
    return app


async def _refresh_releases(releases: ReleaseCache, every_seconds: float) -> None:
    """Read the bots' releases again and again (off the event loop: the store may be slow or down)."""
    while True:
        await asyncio.sleep(every_seconds)
        await asyncio.to_thread(releases.refresh)


async def _guard_canaries(engine: Engine, releases: ReleaseCache, settings: Settings) -> None:
    """Judge every canary every `canary_guard_seconds` (off the event loop); a canary dropped reaches this
    replica's new conversations at once, the other replicas' within their release period."""
    while True:
        await asyncio.sleep(settings.canary_guard_seconds)
        try:
            verdicts = await asyncio.to_thread(
                canary_guard.guard_all,
                engine,
                margin=settings.canary_guard_margin,
                min_turns=settings.canary_guard_min_turns,
            )
        except SQLAlchemyError as err:  # the store is down: the canary is judged once it is back
            log.warning("the canary guard could not read the store (%s)", err.__class__.__name__)
            continue
        if any(verdict.outcome == "rolled_back" for verdict in verdicts):
            await asyncio.to_thread(releases.refresh)
