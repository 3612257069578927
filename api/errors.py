"""Every error the API answers with, in one shape, and the one place Temporal's errors become HTTP statuses.

    ApiError                 raised by routes and dependencies: status, code, message
    RequestValidationError   -> 422 invalid_request
    HTTPException (Starlette)-> its status, code from the status
    temporal errors          -> see `from_temporal`
    anything else            -> 500 internal_error, logged, no stack trace in the body

Body: {"error": {"code": "...", "message": "..."}}
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from temporalio.client import WorkflowUpdateFailedError, WorkflowUpdateRPCTimeoutOrCancelledError
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from workflows.conversation import (
    CONVERSATION_ENDED,
    INVALID_TURN,
    NOT_HANDED_OFF,
    QUEUE_FULL,
    TURN_IN_PROGRESS,
)

log = logging.getLogger("dialogue.api")

RETRY_AFTER_SECONDS = "5"


class ApiError(Exception):
    def __init__(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


def not_found(conversation_id: str) -> ApiError:
    return ApiError(404, "conversation_not_found", f"conversation {conversation_id!r} does not exist")


def conversation_ended(conversation_id: str) -> ApiError:
    return ApiError(409, "conversation_ended", f"conversation {conversation_id!r} has ended")


def temporal_unavailable() -> ApiError:
    return ApiError(
        503,
        "temporal_unavailable",
        "the conversation service is unavailable; retry shortly",
        {"Retry-After": RETRY_AFTER_SECONDS},
    )


def from_temporal(exc: BaseException, conversation_id: str) -> ApiError | None:
    """The HTTP error for an exception from the Temporal client, or None if it is not one of its."""
    if isinstance(exc, WorkflowUpdateFailedError):
        cause = exc.cause
        if isinstance(cause, ApplicationError) and cause.type == CONVERSATION_ENDED:
            return conversation_ended(conversation_id)
        if isinstance(cause, ApplicationError) and cause.type == INVALID_TURN:
            return ApiError(422, "invalid_turn", cause.message)
        if isinstance(cause, ApplicationError) and cause.type == TURN_IN_PROGRESS:
            return ApiError(409, "turn_in_progress", cause.message)
        if isinstance(cause, ApplicationError) and cause.type == NOT_HANDED_OFF:
            return ApiError(409, "not_handed_off", cause.message)
        if isinstance(cause, ApplicationError) and cause.type == QUEUE_FULL:
            return ApiError(429, "turn_queue_full", cause.message, {"Retry-After": RETRY_AFTER_SECONDS})
        return ApiError(500, "turn_failed", "the turn could not be completed")
    if isinstance(exc, WorkflowAlreadyStartedError):
        return ApiError(409, "conversation_exists", f"conversation {conversation_id!r} already exists")
    if isinstance(exc, WorkflowUpdateRPCTimeoutOrCancelledError):
        return ApiError(
            504, "turn_timeout", "the reply was not ready in time; retry with the same Idempotency-Key"
        )
    if isinstance(exc, RPCError):
        if exc.status in (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED):
            return temporal_unavailable()
        if exc.status == RPCStatusCode.NOT_FOUND:
            return not_found(conversation_id)
        if exc.status == RPCStatusCode.ALREADY_EXISTS:
            return conversation_ended(conversation_id)
        if exc.status == RPCStatusCode.RESOURCE_EXHAUSTED:
            # Temporal's limit of in-flight updates per workflow: too many turns at once.
            return ApiError(
                429,
                "too_many_turns",
                "too many turns in flight for this conversation; retry shortly",
                {"Retry-After": RETRY_AFTER_SECONDS},
            )
        if exc.status == RPCStatusCode.FAILED_PRECONDITION:
            return ApiError(409, "conversation_unavailable", exc.message)
        return None
    # A lazy client that cannot reach the server says so with a RuntimeError.
    if isinstance(exc, RuntimeError) and str(exc).startswith("Failed client connect"):
        return temporal_unavailable()
    return None


@contextmanager
def temporal_errors(conversation_id: str) -> Iterator[None]:
    """Translate the Temporal client's exceptions raised inside the block into `ApiError`s."""
    try:
        yield
    except ApiError:
        raise
    except Exception as exc:
        mapped = from_temporal(exc, conversation_id)
        if mapped is None:
            raise
        raise mapped from exc


def _body(code: str, message: str) -> dict[str, dict[str, str]]:
    return {"error": {"code": code, "message": message}}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(_body(exc.code, exc.message), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg', '')}" for err in exc.errors()
        )
        return JSONResponse(_body("invalid_request", problems or "invalid request"), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Spelled out where Python's phrase differs between versions (413 was renamed in 3.13).
        code = {413: "content_too_large"}.get(exc.status_code) or HTTPStatus(
            exc.status_code
        ).phrase.lower().replace(" ", "_")
        return JSONResponse(_body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(_body("internal_error", "internal server error"), status_code=500)
