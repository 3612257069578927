"""The API's one error boundary: every error it answers, in one table, and where each comes from.

`ERRORS` lists each error code with its HTTP status, what it means, whether it carries `Retry-After`,
and what raises it: a route or dependency (`ApiError(code, message)`), a refusal of the conversation's
workflow (its `ApplicationError` type, `dialogue.model.contracts`), a Temporal RPC status, or an exception
type (validation, store, Temporal client). `translate` turns an exception into its entry; routes raise
`ApiError`s or run Temporal calls inside `temporal_errors`, and never pick a status themselves.
The OpenAPI document lists each route's error statuses from this table (`responses`).

Body: {"error": {"code": "...", "message": "..."}}
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from dialogue.model.contracts import (
    APPROVAL_DECIDED,
    APPROVAL_FORBIDDEN,
    CONVERSATION_ENDED,
    INVALID_TURN,
    NO_SUCH_APPROVAL,
    NO_SUCH_REMINDER,
    NOT_HANDED_OFF,
    NOT_YOUR_CONVERSATION,
    QUEUE_FULL,
    REMINDERS_FULL,
    STORE_BEHIND,
    TURN_IN_PROGRESS,
)
from dialogue.platform.recovery import BROKEN
from dialogue.platform.temporal import workflow_id

log = logging.getLogger("dialogue.api")

RETRY_AFTER_SECONDS = "5"
UNAVAILABLE_RETRY_AFTER_SECONDS = "30"
SHED_RETRY_AFTER_SECONDS = "1"
STREAMS_RETRY_AFTER_SECONDS = "10"


@dataclass(frozen=True)
class Refusal:
    """The conversation workflow refused an update with an `ApplicationError` of this type."""

    type: str


@dataclass(frozen=True)
class ErrorCode:
    code: str
    status: int
    meaning: str
    """What a client is told the code means (the OpenAPI document's description)."""
    retry_after: str | None = None
    """`Retry-After` in seconds, for an error that passes: a retry later may succeed."""
    causes: tuple[Refusal | RPCStatusCode | type[BaseException], ...] = ()
    """What raises it besides a route's `ApiError(code, …)`."""


ERRORS: dict[str, ErrorCode] = {
    entry.code: entry
    for entry in (
        # The request itself.
        ErrorCode(
            "invalid_request",
            422,
            "The request does not match its schema, or its `Idempotency-Key` header and body disagree.",
            causes=(RequestValidationError,),
        ),
        ErrorCode(
            "invalid_turn",
            422,
            "The turn's text is too long (or the workflow refused it).",
            causes=(Refusal(INVALID_TURN),),
        ),
        ErrorCode("invalid_text", 422, "The text to parse is too long."),
        ErrorCode(
            "idempotency_conflict",
            409,
            "The `Idempotency-Key` header and the body's `idempotency_key` differ.",
        ),
        ErrorCode("bad_request", 400, "The body could not be read: not JSON, or not UTF-8."),
        ErrorCode("content_too_large", 413, "The request body is larger than the API accepts."),
        ErrorCode(
            "request_timeout",
            408,
            "The request body did not arrive within the API's deadline for reading it; send it again.",
        ),
        ErrorCode("unsupported_media_type", 415, "The codec endpoints take `application/json` only."),
        ErrorCode("undecodable_payload", 422, "A payload could not be decrypted with any configured key."),
        ErrorCode("invalid_payloads", 422, "The body is not a list of Temporal payloads."),
        ErrorCode("not_found", 404, "No such route."),
        ErrorCode(
            "method_not_allowed", 405, "The route does not take this method; `Allow` lists those it takes."
        ),
        # Who is calling.
        ErrorCode("unauthenticated", 401, "No `Authorization: Bearer` key or token was sent."),
        ErrorCode("invalid_credentials", 401, "The key or token is not valid (unknown, revoked, expired)."),
        ErrorCode(
            "forbidden",
            403,
            "The key's scope does not allow this (or this person may not decide this approval: a `user` "
            "approval of a conversation with an end user is theirs alone).",
            causes=(Refusal(APPROVAL_FORBIDDEN),),
        ),
        ErrorCode(
            "origin_not_allowed",
            403,
            "The page's origin (the `Origin` header) is not one the deployment lets start anonymous "
            "widget sessions (`DIALOGUE_WIDGET_ORIGINS`).",
        ),
        ErrorCode(
            "invalid_signature",
            401,
            "A messaging platform's webhook request whose signature does not match the channel's secret, "
            "or whose timestamp is stale.",
        ),
        # Limits.
        ErrorCode(
            "rate_limited", 429, "Too many requests for this key; `Retry-After` says when to send again.", "1"
        ),
        ErrorCode(
            "overloaded",
            503,
            "The API is at its limit of turns in flight and sheds this one at once; send it again after "
            "`Retry-After` with the same `Idempotency-Key`.",
            SHED_RETRY_AFTER_SECONDS,
        ),
        ErrorCode(
            "too_many_streams",
            429,
            "This key or its tenant has as many event streams open as it may; close one, or wait for one "
            "to end, and retry after `Retry-After`.",
            STREAMS_RETRY_AFTER_SECONDS,
        ),
        ErrorCode(
            "turn_queue_full",
            429,
            "The conversation's queue of waiting turns is full.",
            RETRY_AFTER_SECONDS,
            causes=(Refusal(QUEUE_FULL),),
        ),
        ErrorCode(
            "too_many_turns",
            429,
            "Temporal's limit of updates in flight for one conversation is reached.",
            RETRY_AFTER_SECONDS,
            causes=(RPCStatusCode.RESOURCE_EXHAUSTED,),
        ),
        # The conversation.
        ErrorCode(
            "conversation_not_found",
            404,
            "No such conversation (for this tenant; for an end user's token, of theirs).",
            causes=(RPCStatusCode.NOT_FOUND, Refusal(NOT_YOUR_CONVERSATION)),
        ),
        ErrorCode(
            "conversation_ended",
            409,
            "The conversation has ended (or was erased): it takes no more turns.",
            causes=(Refusal(CONVERSATION_ENDED), RPCStatusCode.ALREADY_EXISTS),
        ),
        ErrorCode("conversation_exists", 409, "A conversation with this id exists already."),
        ErrorCode(
            "conversation_unavailable",
            503,
            "The conversation's workflow failed, was terminated or timed out (or cannot be read); its transcript "
            "is kept and an operator brings it back with `dialogue recover`.",
            UNAVAILABLE_RETRY_AFTER_SECONDS,
            causes=(WorkflowQueryFailedError,),
        ),
        ErrorCode(
            "conversation_busy",
            503,
            "The conversation's workflow cannot take the request now: it is between runs, or its worker keeps "
            "failing its task or does not answer (the runbook's first row); retry shortly.",
            "1",
            # A query's own deadline (QUERY_TIMEOUT in the routes) passing is CANCELLED.
            causes=(RPCStatusCode.FAILED_PRECONDITION, RPCStatusCode.CANCELLED),
        ),
        ErrorCode(
            "turn_in_progress",
            409,
            "Another turn is running and the conversation rejects double texts.",
            causes=(Refusal(TURN_IN_PROGRESS),),
        ),
        ErrorCode("turn_not_found", 404, "No such turn (or no answered turn) in the conversation."),
        ErrorCode("memory_item_not_found", 404, "Nothing of this kind is remembered of the end user."),
        ErrorCode(
            "memory_not_consented",
            409,
            "The end user has not consented to being remembered: nothing is kept of them until they do.",
        ),
        ErrorCode(
            "nothing_to_score",
            409,
            "The conversation has no answered turn yet: there is nothing to score.",
        ),
        ErrorCode(
            "turn_timeout",
            504,
            "The reply was not ready in time; the turn goes on: send it again with the same `Idempotency-Key` "
            "to get its reply.",
            causes=(WorkflowUpdateRPCTimeoutOrCancelledError,),
        ),
        ErrorCode("update_timeout", 504, "The conversation was busy past the deadline; retry shortly."),
        ErrorCode(
            "turn_failed", 500, "The turn could not be completed.", causes=(WorkflowUpdateFailedError,)
        ),
        ErrorCode("feature_disabled", 409, "The feature is switched off for this conversation."),
        ErrorCode(
            "not_handed_off",
            409,
            "The conversation is not held by a person: hand it off first.",
            causes=(Refusal(NOT_HANDED_OFF),),
        ),
        ErrorCode(
            "approval_not_found",
            404,
            "No such approval in the conversation.",
            causes=(Refusal(NO_SUCH_APPROVAL),),
        ),
        ErrorCode(
            "reminder_not_found",
            404,
            "No such reminder waiting in the conversation (sent or cancelled already).",
            causes=(Refusal(NO_SUCH_REMINDER),),
        ),
        ErrorCode(
            "too_many_reminders",
            409,
            "The conversation holds the most reminders it may (20): cancel one, or wait for one to be sent.",
            causes=(Refusal(REMINDERS_FULL),),
        ),
        ErrorCode(
            "approval_decided", 409, "The approval was decided already.", causes=(Refusal(APPROVAL_DECIDED),)
        ),
        ErrorCode("tool_result_not_found", 404, "No stored whole result of this tool call."),
        # The knowledge base and keys.
        ErrorCode("document_not_found", 404, "No such document."),
        ErrorCode("document_conflict", 409, "The document is being written by another request; retry."),
        ErrorCode("key_not_found", 404, "No such key."),
        ErrorCode("channel_not_found", 404, "No messaging channel of this name is configured here."),
        ErrorCode("delivery_not_found", 404, "No such delivery to a messaging platform."),
        ErrorCode("delivery_not_dead", 409, "Only a dead letter is resent: this delivery is not one."),
        ErrorCode("bot_not_found", 404, "No such bot, bot version, or release of the bot."),
        ErrorCode(
            "invalid_release",
            409,
            "The release cannot be made: a canary before any stable version, the stable version as its own "
            "canary, or a rollback with nothing to go back to.",
        ),
        ErrorCode(
            "not_configured",
            501,
            "The deployment has not set this up (end-user tokens need `DIALOGUE_END_USER_TOKEN_SECRET` "
            "outside development).",
        ),
        # Dependencies.
        ErrorCode(
            "store_unavailable",
            503,
            "The SQL store is unreachable, locked, out of connections, or behind the conversation; retry shortly.",
            RETRY_AFTER_SECONDS,
            causes=(
                Refusal(STORE_BEHIND),
                OperationalError,
                InterfaceError,
                DisconnectionError,
                PoolTimeoutError,
            ),
        ),
        ErrorCode(
            "temporal_unavailable",
            503,
            "Temporal cannot be reached; retry shortly.",
            RETRY_AFTER_SECONDS,
            causes=(RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED),
        ),
        ErrorCode("internal_error", 500, "A bug: the API logged it; the body carries no detail."),
    )
}

# Codes a route that calls the conversation's workflow can answer (its `responses`).
WORKFLOW_READ = (
    "conversation_not_found",
    "conversation_unavailable",
    "conversation_busy",
    "temporal_unavailable",
)
WORKFLOW_UPDATE = (*WORKFLOW_READ, "conversation_ended", "too_many_turns", "update_timeout", "turn_failed")

_BY_REFUSAL = {c.type: e for e in ERRORS.values() for c in e.causes if isinstance(c, Refusal)}
_BY_RPC_STATUS = {c: e for e in ERRORS.values() for c in e.causes if isinstance(c, RPCStatusCode)}
_BY_EXCEPTION = [(c, e) for e in ERRORS.values() for c in e.causes if isinstance(c, type)]
# Starlette's own errors (no route, wrong method, body too large), by status.
_BY_HTTP_STATUS = {
    400: ERRORS["bad_request"],
    404: ERRORS["not_found"],
    405: ERRORS["method_not_allowed"],
    408: ERRORS["request_timeout"],
    413: ERRORS["content_too_large"],
}


class ApiError(Exception):
    """An error of the table, with this request's message; status and `Retry-After` come from the table."""

    def __init__(self, code: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        entry = ERRORS[code]
        self.status = entry.status
        self.code = code
        self.message = message
        self.headers = ({"Retry-After": entry.retry_after} if entry.retry_after else {}) | dict(headers or {})
        if entry.status == 401:
            self.headers.setdefault("WWW-Authenticate", "Bearer")


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    """Every error's body."""

    error: ErrorDetail


def responses(*codes: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these error codes: one entry per status, naming its codes."""
    by_status: dict[int, list[ErrorCode]] = {}
    for code in codes:
        entry = ERRORS[code]
        by_status.setdefault(entry.status, []).append(entry)
    return {
        status: {
            "model": ErrorBody,
            "description": " ".join(f"`{e.code}`: {e.meaning}" for e in entries),
        }
        for status, entries in sorted(by_status.items())
    }


def not_found(conversation_id: str) -> ApiError:
    return ApiError("conversation_not_found", f"conversation {conversation_id!r} does not exist")


def conversation_ended(conversation_id: str) -> ApiError:
    return ApiError("conversation_ended", f"conversation {conversation_id!r} has ended")


def turn_timeout(turn_id: str) -> ApiError:
    return ApiError(
        "turn_timeout",
        f"turn {turn_id} is still running; retry with 'Idempotency-Key: {turn_id}' to get its reply",
    )


def conversation_unavailable(conversation_id: str, key: str, how: str) -> ApiError:
    tenant = key.split("/", 1)[0]
    return ApiError(
        "conversation_unavailable",
        f"conversation {conversation_id!r} is unavailable: its workflow {workflow_id(key)} {how}. Its "
        f"transcript is kept; an operator can bring it back with "
        f"'dialogue recover {conversation_id} --tenant {tenant}' (see the runbook)",
    )


def translate(exc: BaseException, conversation_id: str = "") -> ApiError | None:
    """The table's error for an exception, or None when the table does not know it (a bug: 500)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, WorkflowUpdateFailedError):
        cause = exc.cause
        refused = _BY_REFUSAL.get(cause.type or "") if isinstance(cause, ApplicationError) else None
        if refused is None:
            return ApiError("turn_failed", "the turn could not be completed")
        if refused.code == "conversation_ended":
            return conversation_ended(conversation_id)
        if refused.code == "conversation_not_found":  # another end user's: said as if it did not exist
            return not_found(conversation_id)
        return ApiError(refused.code, str(getattr(cause, "message", "")).removesuffix("; retry shortly"))
    if isinstance(exc, RPCError):
        entry = _BY_RPC_STATUS.get(exc.status)
        if entry is None:
            return None
        if entry.code == "conversation_not_found":
            return not_found(conversation_id)
        if entry.code == "conversation_ended":
            return conversation_ended(conversation_id)
        if entry.code == "temporal_unavailable":
            return ApiError(entry.code, "the conversation service is unavailable; retry shortly")
        if entry.code == "too_many_turns":
            return ApiError(entry.code, "too many turns in flight for this conversation; retry shortly")
        return ApiError(entry.code, exc.message)
    if isinstance(exc, WorkflowQueryFailedError):
        # The workflow's code could not answer (a worker that cannot replay its history): not the caller's fault.
        return ApiError(
            "conversation_unavailable", f"conversation {conversation_id!r} could not be read: {exc.message}"
        )
    # A lazy client that cannot reach the server says so with a RuntimeError.
    if isinstance(exc, RuntimeError) and str(exc).startswith("Failed client connect"):
        return ApiError("temporal_unavailable", "the conversation service is unavailable; retry shortly")
    for kind, entry in _BY_EXCEPTION:
        if isinstance(exc, kind):
            if entry.code == "store_unavailable":
                return ApiError(entry.code, "the store is unavailable; retry shortly")
            return ApiError(entry.code, str(exc) or entry.meaning)
    return None


async def closed_conversation(
    temporal: Client, key: str, conversation_id: str, turn_id: str | None = None
) -> ApiError:
    """The error for work a conversation's workflow refused because it is closed, or could not find:
    404 when Temporal does not know it, 503 when its workflow failed, was terminated or timed out (broken,
    not ended: `dialogue recover` brings it back), 409 when the conversation ended, and for a running one
    409 `conversation_exists` for a running one; 404 `turn_not_found` when a turn was looked for."""
    try:
        described = await temporal.get_workflow_handle(workflow_id(key)).describe()
    except RPCError as err:
        return translate(err, conversation_id) or ApiError("temporal_unavailable", err.message)
    broken = BROKEN.get(described.status) if described.status else None
    if broken is not None:
        closed = f" at {described.close_time:%Y-%m-%d %H:%M:%S} UTC" if described.close_time else ""
        return conversation_unavailable(conversation_id, key, f"{broken.replace('_', ' ')}{closed}")
    if turn_id is not None:
        return ApiError("turn_not_found", f"no turn {turn_id!r} in conversation {conversation_id!r}")
    if described.status == WorkflowExecutionStatus.RUNNING:
        return ApiError("conversation_exists", f"conversation {conversation_id!r} already exists")
    return conversation_ended(conversation_id)


@asynccontextmanager
async def temporal_errors(
    conversation_id: str,
    *,
    temporal: Client | None = None,
    key: str | None = None,
    turn_id: str | None = None,
) -> AsyncIterator[None]:
    """Translate what the Temporal calls inside the block raise. Given the client and the conversation's
    key, what needs the workflow's state to say (a closed or unknown workflow) is read from Temporal."""
    try:
        yield
    except ApiError:
        raise
    except Exception as exc:
        closed = isinstance(exc, WorkflowAlreadyStartedError) or (
            isinstance(exc, RPCError) and exc.status == RPCStatusCode.NOT_FOUND
        )
        if closed and temporal is not None and key is not None:
            looked_for = turn_id if isinstance(exc, RPCError) else None  # an update or query by its id
            raise await closed_conversation(temporal, key, conversation_id, looked_for) from None
        if isinstance(exc, TimeoutError | WorkflowUpdateRPCTimeoutOrCancelledError) and turn_id is not None:
            raise turn_timeout(turn_id) from None
        mapped = translate(exc, conversation_id)
        if mapped is None:
            raise
        raise mapped from exc


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": error.code, "message": error.message}},
        status_code=error.status,
        headers=error.headers,
    )


class PreparedResponse:
    """An error's response rendered once and sent as it is each time: for the answers given at a high rate,
    a turn shed under a flood, where building a `JSONResponse` each time is a good part of their cost."""

    def __init__(self, error: ApiError) -> None:
        rendered = error_response(error)
        self.status = rendered.status_code
        self.headers = rendered.raw_headers
        self.body = rendered.body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # A copy of the headers each time: a middleware may add to the list it is sent (CORS does).
        await send({"type": "http.response.start", "status": self.status, "headers": list(self.headers)})
        await send({"type": "http.response.body", "body": self.body})


def allowed_methods(request: Request) -> set[str]:
    """Every method the request's path takes, from the OpenAPI document (what the routes declare)."""
    app = request.app
    paths: list[tuple[re.Pattern[str], set[str]]] | None = getattr(app.state, "method_table", None)
    if paths is None:
        paths = [
            (
                re.compile("^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)) + "$"),
                {m.upper() for m in item},
            )
            for template, item in app.openapi()["paths"].items()
        ]
        app.state.method_table = paths
    return {method for pattern, methods in paths if pattern.match(request.url.path) for method in methods}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg', '')}" for err in exc.errors()
        )
        return error_response(ApiError("invalid_request", problems or "invalid request"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 405 and (methods := allowed_methods(request)):
            # Starlette names the methods of the first route on the path only; a path has one per method.
            exc.headers = {"Allow": ", ".join(sorted(methods))}
        entry = _BY_HTTP_STATUS.get(exc.status_code)
        if entry is None:  # not raised by this code base; named after its status
            code = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_")
            body = {"error": {"code": code, "message": str(exc.detail)}}
            return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)
        return error_response(ApiError(entry.code, str(exc.detail), exc.headers))

    @app.exception_handler(SQLAlchemyError)
    async def _store(request: Request, exc: SQLAlchemyError) -> JSONResponse:
        mapped = translate(exc)
        if mapped is None:
            return await _unexpected(request, exc)
        log.warning(
            "store unavailable on %s %s: %s", request.method, request.url.path, exc.__class__.__name__
        )
        return error_response(mapped)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(ApiError("internal_error", "internal server error"))
