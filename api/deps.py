"""Dependencies the routes declare: settings, the store's engine, the Temporal client, the caller."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.engine import Engine
from temporalio.client import Client

from api.errors import ApiError
from dialogue.settings import Settings


@dataclass(frozen=True)
class Principal:
    """Who is calling. One development tenant for now; keys per tenant come with tenancy."""

    tenant: str
    scope: str


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def get_temporal(request: Request) -> Client:
    client: Client = request.app.state.temporal
    return client


def get_principal(request: Request) -> Principal:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise ApiError(
            401,
            "unauthenticated",
            "send the API key as 'Authorization: Bearer <key>'",
            {"WWW-Authenticate": "Bearer"},
        )
    expected: str = request.app.state.api_key
    if not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise ApiError(401, "invalid_api_key", "the API key is not valid", {"WWW-Authenticate": "Bearer"})
    return Principal(tenant="default", scope="admin")


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]
TemporalClientDep = Annotated[Client, Depends(get_temporal)]
CurrentPrincipal = Annotated[Principal, Depends(get_principal)]
