"""The OpenAPI document as the API answers: FastAPI's, with every error status each route can give.

A route lists its own error codes (`responses=errors.responses(...)`); what every route of `/v1` (and
the codec) can answer is added here: a credential missing or refused (401), the key's rate limit (429),
the request's validation (422, in the error table's body, not FastAPI's), a body too large (413), the
store behind the key lookup (503), a bug (500). Limits that depend on settings (the longest text a turn
takes) are written in from the settings the app runs with. `openapi.json` at the repository's root is
this document for the default settings (`make openapi`); a test fails when the two differ.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from api.errors import responses
from dialogue.platform.settings import Settings

# What any authenticated route can answer, besides its own errors.
COMMON = ("unauthenticated", "invalid_credentials", "rate_limited", "store_unavailable", "internal_error")
WITH_BODY = ("bad_request", "content_too_large", "request_timeout")
WITH_PARAMETERS = ("invalid_request",)
# Request fields bounded by a setting: (schema, field) -> the setting's name.
BOUNDED_BY_SETTINGS = {
    ("TurnCreate", "text"): "max_text_chars",
    ("AgentMessageRequest", "text"): "max_text_chars",
    ("TextToParse", "text"): "max_text_chars",
}

CONVERSATION = "/v1/conversations/{conversation_id}"
TURN = f"{CONVERSATION}/turns/{{turn_id}}"
_FROM_BODY = {"conversation_id": "$response.body#/conversation_id"}
_TURN_FROM_BODY = {**_FROM_BODY, "turn_id": "$response.body#/turn_id"}
# OpenAPI links: what a response lets a client do next, with which of its values. A conversation's
# life as a client lives it: create, turn, read, rate, erase (schemathesis' stateful phase follows them).
LINKS: dict[tuple[str, str, str], dict[str, tuple[str, str, dict[str, str]]]] = {
    ("/v1/conversations", "post", "201"): {
        "SendTurn": (f"{CONVERSATION}/turns", "post", _FROM_BODY),
        "ReadConversation": (CONVERSATION, "get", _FROM_BODY),
        "ReadMessages": (f"{CONVERSATION}/messages", "get", _FROM_BODY),
        "EndConversation": (f"{CONVERSATION}/end", "post", _FROM_BODY),
    },
    (f"{CONVERSATION}/turns", "post", "200"): {
        "ReadTurn": (TURN, "get", _TURN_FROM_BODY),
        "ReadMessages": (f"{CONVERSATION}/messages", "get", _FROM_BODY),
        "ReadLineage": (f"{TURN}/lineage", "get", _TURN_FROM_BODY),
        "RateAnswer": (f"{TURN}/feedback", "post", _TURN_FROM_BODY),
        "HandOff": (f"{CONVERSATION}/handoff", "post", _FROM_BODY),
    },
    (f"{TURN}/feedback", "post", "201"): {
        "EraseConversation": (CONVERSATION, "delete", {"conversation_id": "$request.path.conversation_id"}),
    },
    (f"{CONVERSATION}/messages", "get", "200"): {
        "EraseConversation": (CONVERSATION, "delete", {"conversation_id": "$request.path.conversation_id"}),
    },
    ("/v1/knowledge/documents", "post", "201"): {
        "ReadDocument": (
            "/v1/knowledge/documents/{document_id}",
            "get",
            {"document_id": "$response.body#/document_id"},
        ),
        "DeleteDocument": (
            "/v1/knowledge/documents/{document_id}",
            "delete",
            {"document_id": "$response.body#/document_id"},
        ),
    },
    ("/v1/keys", "post", "201"): {
        "RevokeKey": ("/v1/keys/{key_id}", "delete", {"key_id": "$response.body#/id"}),
    },
}


def contract(app: FastAPI, settings: Settings) -> dict[str, Any]:
    schema = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
        tags=app.openapi_tags,
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for path, item in schema["paths"].items():
        if not path.startswith(("/v1/", "/codec/")):
            continue
        for operation in item.values():
            codes = list(COMMON)
            if "requestBody" in operation:
                codes += WITH_BODY
            if "requestBody" in operation or operation.get("parameters"):
                codes += WITH_PARAMETERS
            answered = operation.setdefault("responses", {})
            for status, response in _rendered(responses(*codes)).items():
                mine = answered.get(status)
                if mine is None or _is_fastapi_validation(mine):
                    answered[status] = response
                elif response["description"] not in mine["description"]:
                    mine["description"] = f"{mine['description']} {response['description']}"
    for (path, method, status), links in LINKS.items():
        response = schema["paths"][path][method]["responses"][status]
        response["links"] = {
            name: {"operationId": schema["paths"][target][verb]["operationId"], "parameters": parameters}
            for name, (target, verb, parameters) in links.items()
        }
    for (name, field), setting in BOUNDED_BY_SETTINGS.items():
        properties = components.get(name, {}).get("properties", {})
        if field in properties:
            properties[field]["maxLength"] = getattr(settings, setting)
    # FastAPI's own validation error shapes are never answered: the error table's body is.
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    components.update(_error_components())
    return schema


def _rendered(entries: dict[int | str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        str(status): {
            "description": entry["description"],
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
        }
        for status, entry in entries.items()
    }


def _is_fastapi_validation(response: dict[str, Any]) -> bool:
    schema = response.get("content", {}).get("application/json", {}).get("schema", {})
    return bool(schema.get("$ref", "").endswith("/HTTPValidationError"))


def _error_components() -> dict[str, Any]:
    from api.errors import ErrorBody

    rendered = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
    definitions = rendered.pop("$defs", {})
    return {"ErrorBody": rendered, **definitions}


def install(app: FastAPI, settings: Settings) -> None:
    """Serve `contract` as the app's OpenAPI document (built once, on first request)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = contract(app, settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def default_document() -> dict[str, Any]:
    """The document for the default settings, whatever the environment says: what `openapi.json` holds."""
    from pydantic import SecretStr

    from api.app import create_app
    from dialogue.platform.codec import PayloadKeys

    # With encryption on (the default) the codec's routes are served; a throwaway key keeps it off disk.
    settings = Settings.model_construct(payload_keys=SecretStr(PayloadKeys.generate("openapi").spec()))
    return contract(create_app(settings), settings)


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"
