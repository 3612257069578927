"""Every error the API answers with, in one shape, and the one place Temporal's errors become HTTP statuses.

    ApiError                 raised by routes and dependencies: status, code, message
    RequestValidationError   -> 422 invalid_request
    HTTPException (Starlette)-> its status, code from the status
    temporal errors          -> see `from_temporal`; a closed workflow -> `closed_conversation`
    store errors             -> see `from_store`: unreachable, locked, timing out -> 503 store_unavailable
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
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from dialogue.contracts import (
    APPROVAL_DECIDED,
    APPROVAL_FORBIDDEN,
    CONVERSATION_ENDED,
    INVALID_TURN,
    NO_SUCH_APPROVAL,
    NOT_HANDED_OFF,
    QUEUE_FULL,
    STORE_BEHIND,
    TURN_IN_PROGRESS,
)
from dialogue.recovery import BROKEN
from dialogue.temporal import workflow_id

log = logging.getLogger("dialogue.api")

RETRY_AFTER_SECONDS = "5"
UNAVAILABLE_RETRY_AFTER_SECONDS = "30"


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


def conversation_unavailable(conversation_id: str, key: str, how: str) -> ApiError:
    tenant = key.split("/", 1)[0]
    return ApiError(
        503,
        "conversation_unavailable",
        f"conversation {conversation_id!r} is unavailable: its workflow {workflow_id(key)} {how}. Its "
        f"transcript is kept; an operator can bring it back with "
        f"'dialogue recover {conversation_id} --tenant {tenant}' (see the runbook)",
        {"Retry-After": UNAVAILABLE_RETRY_AFTER_SECONDS},
    )


def store_unavailable(reason: str = "the store is unavailable") -> ApiError:
    return ApiError(
        503, "store_unavailable", f"{reason}; retry shortly", {"Retry-After": RETRY_AFTER_SECONDS}
    )


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
        if isinstance(cause, ApplicationError) and cause.type == NO_SUCH_APPROVAL:
            return ApiError(404, "approval_not_found", cause.message)
        if isinstance(cause, ApplicationError) and cause.type == APPROVAL_DECIDED:
            return ApiError(409, "approval_decided", cause.message)
        if isinstance(cause, ApplicationError) and cause.type == APPROVAL_FORBIDDEN:
            return ApiError(403, "forbidden", cause.message)
        if isinstance(cause, ApplicationError) and cause.type == QUEUE_FULL:
            return ApiError(429, "turn_queue_full", cause.message, {"Retry-After": RETRY_AFTER_SECONDS})
        if isinstance(cause, ApplicationError) and cause.type == STORE_BEHIND:
            return store_unavailable(cause.message.removesuffix("; retry shortly"))
        return ApiError(500, "turn_failed", "the turn could not be completed")
    if isinstance(exc, WorkflowQueryFailedError):
        # The workflow's code could not answer (a worker that cannot replay its history): not the caller's fault.
        return ApiError(
            503,
            "conversation_unavailable",
            f"conversation {conversation_id!r} could not be read: {exc.message}",
            {"Retry-After": UNAVAILABLE_RETRY_AFTER_SECONDS},
        )
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
            # The workflow is between runs (continuing as new) or closing: a retry finds it settled.
            return ApiError(503, "conversation_busy", exc.message, {"Retry-After": "1"})
        return None
    # A lazy client that cannot reach the server says so with a RuntimeError.
    if isinstance(exc, RuntimeError) and str(exc).startswith("Failed client connect"):
        return temporal_unavailable()
    return None


def from_store(exc: BaseException) -> ApiError | None:
    """503 for the SQL store being unreachable, locked or out of connections; None for anything else
    (a bug, such as a constraint the code broke, stays a 500)."""
    if isinstance(exc, OperationalError | InterfaceError | DisconnectionError | PoolTimeoutError):
        return store_unavailable()
    return None


async def closed_conversation(temporal: Client, key: str, conversation_id: str) -> ApiError:
    """The error for work a conversation's workflow refused because it is closed: 409 when the
    conversation ended, 503 when its workflow failed, was terminated or timed out (broken, not ended:
    `dialogue recover` brings it back), 404 when Temporal does not know it."""
    try:
        described = await temporal.get_workflow_handle(workflow_id(key)).describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return not_found(conversation_id)
        return from_temporal(err, conversation_id) or temporal_unavailable()
    broken = BROKEN.get(described.status) if described.status else None
    if broken is not None:
        closed = f" at {described.close_time:%Y-%m-%d %H:%M:%S} UTC" if described.close_time else ""
        return conversation_unavailable(conversation_id, key, f"{broken.replace('_', ' ')}{closed}")
    if described.status == WorkflowExecutionStatus.RUNNING:
        return ApiError(409, "conversation_exists", f"conversation {conversation_id!r} already exists")
    return conversation_ended(conversation_id)


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

    @app.exception_handler(SQLAlchemyError)
    async def _store(request: Request, exc: SQLAlchemyError) -> JSONResponse:
        mapped = from_store(exc)
        if mapped is None:
            return await _unexpected(request, exc)
        log.warning(
            "store unavailable on %s %s: %s", request.method, request.url.path, exc.__class__.__name__
        )
        return await _api_error(request, mapped)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(_body("internal_error", "internal server error"), status_code=500)
