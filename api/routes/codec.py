"""The codec server: `POST /codec/encode` and `POST /codec/decode` for the Temporal Web UI and CLI.

With payloads encrypted at rest, the Web UI shows ciphertext unless it can call a codec
server holding the keys. This is Temporal's remote codec protocol: the body is the proto3
JSON form of `temporal.api.common.v1.Payloads`, every bytes field (each metadata value and
the data) base64, and the answer has the same shape:

    POST /codec/decode
    Content-Type: application/json
    X-Namespace: default
    Authorization: Bearer <token>      (when the UI is set to pass one)

    {"payloads": [{"metadata": {"encoding": "YmluYXJ5L2VuY3J5cHRlZA==", ...}, "data": "..."}]}

Point the UI's codec endpoint (Namespace settings, or `--ui-codec-endpoint` of the dev
server) and the CLI's `--codec-endpoint` at `<api base>/codec`. The browser calls it
cross-origin, so the app also needs `codec_cors` for the UI's origin.

Anyone who can call this can decrypt everything: `authorize` runs before the body is read.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson
from fastapi import APIRouter, FastAPI, Request, Response
from google.protobuf import json_format
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.converter import PayloadCodec

from api.errors import ApiError, responses
from dialogue.platform.codec import decode_base64

# A history event's payloads together; Temporal refuses a single payload over 2 MB, which is
# about 2.7 MB as base64. (The app-wide `BodyLimits` applies first, when it is lower.)
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
CODEC_PATH_PREFIX = "/codec"

Authorize = Callable[[Request], Awaitable[None]]
Transform = Callable[[Sequence[Payload]], Awaitable[list[Payload]]]

_OPENAPI_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "description": "temporal.api.common.v1.Payloads as proto3 JSON (bytes as base64)",
                    "additionalProperties": False,
                    "properties": {
                        "payloads": {
                            # proto3 JSON: null is the field's default, an empty list.
                            "type": ["array", "null"],
                            "items": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {
                                    "metadata": {
                                        "type": ["object", "null"],
                                        "additionalProperties": {"type": "string", "format": "byte"},
                                    },
                                    "data": {"type": ["string", "null"], "format": "byte"},
                                },
                            },
                        }
                    },
                }
            }
        },
    }
}


def codec_router(
    codec: PayloadCodec,
    authorize: Authorize,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    prefix: str = CODEC_PATH_PREFIX,
) -> APIRouter:
    """The codec endpoints under `prefix`. `authorize(request)` raises (an `ApiError`) to refuse."""
    router = APIRouter(prefix=prefix, tags=["codec"])

    async def apply(request: Request, transform: Transform) -> Response:
        await authorize(request)
        media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if media_type != "application/json":
            # Also keeps the endpoints out of reach of cross-origin "simple" requests: a browser
            # sends application/json only after a CORS preflight, which only the UI's origin passes.
            raise ApiError("unsupported_media_type", "send the payloads as application/json")
        payloads = parse_payloads(await _read_body(request, max_body_bytes))
        try:
            converted = await transform(payloads.payloads)
        except ValueError as err:  # the codec's refusal of a payload (unknown key, tampered data)
            raise ApiError("undecodable_payload", str(err)) from None
        return Response(orjson.dumps(dump_payloads(converted)), media_type="application/json")

    errors = responses("forbidden", "unsupported_media_type", "undecodable_payload", "invalid_payloads")

    @router.post(
        "/encode", openapi_extra=_OPENAPI_BODY, summary="Encode (encrypt) payloads", responses=errors
    )
    async def encode_payloads(request: Request) -> Response:
        return await apply(request, codec.encode)

    @router.post(
        "/decode", openapi_extra=_OPENAPI_BODY, summary="Decode (decrypt) payloads", responses=errors
    )
    async def decode_payloads(request: Request) -> Response:
        return await apply(request, codec.decode)

    return router


async def _read_body(request: Request, max_bytes: int) -> bytes:
    message = f"request body exceeds {max_bytes} bytes"
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise ApiError("content_too_large", message)
    # Counted as received: Content-Length may be absent (chunked) or wrong.
    chunks: list[bytes] = []
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > max_bytes:
            raise ApiError("content_too_large", message)
        chunks.append(chunk)
    return b"".join(chunks)


def _invalid(message: str) -> ApiError:
    return ApiError("invalid_payloads", message)


def parse_payloads(body: bytes) -> Payloads:
    """`Payloads` from its proto3 JSON, strictly: bad JSON or base64 is an `ApiError` 422.

    The base64 is checked here because protobuf's parser silently drops characters outside
    the alphabet, turning garbage into wrong bytes rather than an error.
    """
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise _invalid("the body is not valid JSON") from None
    if not isinstance(document, dict):
        raise _invalid('expected an object: {"payloads": [...]}')
    items = document.get("payloads")
    if items is not None and not isinstance(items, list):
        raise _invalid("payloads: expected an array")
    for index, item in enumerate(items or []):
        where = f"payloads[{index}]"
        if not isinstance(item, dict):
            raise _invalid(f"{where}: expected an object")
        metadata = item.get("metadata")
        if metadata is None:
            metadata = {}
        if not isinstance(metadata, dict):
            raise _invalid(f"{where}.metadata: expected an object")
        fields = [(f"{where}.metadata.{name}", value) for name, value in metadata.items()]
        if item.get("data") is not None:
            fields.append((f"{where}.data", item["data"]))
        for field, value in fields:
            if not isinstance(value, str):
                raise _invalid(f"{field}: expected a base64 string")
            try:
                decode_base64(value)
            except ValueError:
                raise _invalid(f"{field}: not valid base64") from None
    try:
        return json_format.ParseDict(document, Payloads())
    except json_format.ParseError as err:
        raise _invalid(str(err)) from None


def dump_payloads(payloads: Sequence[Payload]) -> dict[str, Any]:
    """The proto3 JSON of `Payloads`; `payloads` present even when empty (protobuf omits empty lists)."""
    document: dict[str, Any] = json_format.MessageToDict(Payloads(payloads=payloads))
    document.setdefault("payloads", [])
    return document


class PathCORSMiddleware:
    """Starlette's `CORSMiddleware`, applied only to requests whose path starts with `path_prefix`.

    The rest of the API stays without CORS: a browser page on another origin gets no access
    to it, even from the Web UI's origin.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        path_prefix: str,
        allow_origins: Sequence[str],
        allow_methods: Sequence[str],
        allow_headers: Sequence[str],
        allow_credentials: bool,
        max_age: int = 600,
    ) -> None:
        self.app = app
        self.path_prefix = path_prefix
        self.cors = CORSMiddleware(
            app,
            allow_origins=allow_origins,
            allow_methods=allow_methods,
            allow_headers=allow_headers,
            allow_credentials=allow_credentials,
            max_age=max_age,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and str(scope["path"]).startswith(self.path_prefix):
            await self.cors(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def codec_cors(app: FastAPI, ui_origins: list[str], *, path_prefix: str = CODEC_PATH_PREFIX + "/") -> None:
    """Let the Web UI at `ui_origins` (e.g. `http://localhost:8233`) call the codec endpoints.

    Answers the browser's preflight (OPTIONS) for `path_prefix` only; other origins are
    refused. Call before the app starts (Starlette refuses middleware added later). No
    origins, no CORS: the CLI needs none.
    """
    origins = [origin.rstrip("/") for origin in ui_origins if origin.strip()]
    if not origins:
        return
    if "*" in origins:
        raise ValueError("codec CORS needs explicit origins: '*' cannot carry credentials")
    app.add_middleware(
        PathCORSMiddleware,
        path_prefix=path_prefix,
        allow_origins=origins,
        allow_methods=["POST", "OPTIONS"],
        allow_headers=["content-type", "x-namespace", "authorization"],
        allow_credentials=True,
    )
