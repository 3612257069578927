"""A typed Python client of the v1 API, async (`AsyncDialogueClient`) and blocking (`DialogueClient`).

It speaks the contract's own models (`dialogue.model.contracts`, `dialogue.model.api_models`) and behaves as the API asks
a well-behaved client to:

- a turn always carries an idempotency key (one is made when none is given), so sending it again is
  safe: on 429 or 503 the client waits as `Retry-After` says and sends it again; on 504 (the reply was
  not ready in time) it sends it again with the same key and collects the reply of the turn already
  running, never a second turn. Other requests are retried on 429 and 503 too, and the reads also on a
  connection that fails. All of it within `retry_for` seconds, then the last error is raised.
- `stream_turn` yields a turn's server-sent events; when the connection drops it reconnects with
  `Last-Event-ID` and goes on where it stopped, and ends at the `final` (or `error`) event.
- an error answer raises `DialogueError` with its status, code and message (the API's error table).

The blocking client runs the async one on a private event loop: use `AsyncDialogueClient` inside
async code.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, TypeVar
from urllib.parse import quote

import httpx
import orjson
from pydantic import BaseModel, TypeAdapter

from dialogue.model.api_models import (
    Caller,
    ConversationCreated,
    ConversationEnded,
    ConversationsPage,
    DocumentPublic,
    DocumentsPage,
    DocumentStored,
    EndUserToken,
    FeedbackPublic,
    KeyCreated,
    KeyPublic,
    MemoryConsentPublic,
    MemoryItemPublic,
    MessagesPage,
    ToolResultPublic,
    TurnAccepted,
    TurnLineage,
    TurnStatus,
    UserErased,
    UserExport,
    UserMemory,
)
from dialogue.model.contracts import (
    AgentMessageReply,
    ApprovalReply,
    ContentType,
    ConversationState,
    DoubleTextPolicy,
    Scope,
    TurnReply,
)

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
P = ParamSpec("P")

RETRYABLE = (429, 503)
DEFAULT_RETRY_FOR = 60.0
LONGEST_WAIT = 30.0
"""A `Retry-After` longer than this is waited only this long before trying again."""


class DialogueError(Exception):
    """The API answered an error (or could not be reached: status 0, code `unreachable`)."""

    def __init__(self, status: int, code: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


@dataclass(frozen=True)
class Event:
    """A server-sent event of a turn: `nlu`, `sources`, `token`, `restart`, `tool_call`, `tool_result`,
    `approval_required`, then `final` (its data a `TurnReply`) or `error`."""

    event: str
    data: Any
    id: str | None = None

    def reply(self) -> TurnReply:
        """The reply a `final` event carries."""
        return TurnReply.model_validate(self.data)


class AsyncDialogueClient:
    """The v1 API at `base_url` with an API key or token, async."""

    def __init__(
        self,
        base_url: str,
        key: str,
        *,
        timeout: float = 60.0,
        retry_for: float = DEFAULT_RETRY_FOR,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        """`http` is a client of one's own (its base URL and headers are used as they are)."""
        self._http = http or httpx.AsyncClient(
            base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=timeout
        )
        self._owns_http = http is None
        self.retry_for = retry_for
        self.resent: Counter[int] = Counter()
        """Requests sent again, by the status that asked for it (0: the connection failed)."""

    @classmethod
    def wrapping(
        cls, http: httpx.AsyncClient, *, retry_for: float = DEFAULT_RETRY_FOR
    ) -> AsyncDialogueClient:
        """The client over an `httpx.AsyncClient` of one's own: its base URL and headers (the key) as they
        are; closing it stays its owner's business."""
        return cls("", "", http=http, retry_for=retry_for)

    async def __aenter__(self) -> AsyncDialogueClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    # Turns.

    async def send_turn(
        self, conversation_id: str, text: str, *, idempotency_key: str | None = None
    ) -> TurnReply:
        """Send a user turn and wait for its reply (the conversation is created if it does not exist)."""
        key = idempotency_key or str(uuid.uuid4())
        response = await self._request(
            "POST",
            f"/v1/conversations/{conversation_id}/turns",
            json={"text": text},
            headers={"Idempotency-Key": key},
            resend_on=(*RETRYABLE, 504),  # 504: the turn runs on; the same key collects its reply
        )
        return TurnReply.model_validate_json(response.content)

    async def queue_turn(
        self, conversation_id: str, text: str, *, idempotency_key: str | None = None
    ) -> TurnAccepted:
        """Send a turn without waiting for its reply (202); `read_turn` fetches it later."""
        key = idempotency_key or str(uuid.uuid4())
        response = await self._request(
            "POST",
            f"/v1/conversations/{conversation_id}/turns",
            json={"text": text, "wait": False},
            headers={"Idempotency-Key": key},
        )
        return TurnAccepted.model_validate_json(response.content)

    async def read_turn(self, conversation_id: str, turn_id: str) -> TurnStatus:
        return await self._get(f"/v1/conversations/{conversation_id}/turns/{turn_id}", TurnStatus)

    async def stream_turn(
        self, conversation_id: str, text: str, *, idempotency_key: str | None = None
    ) -> AsyncGenerator[Event, None]:
        """A turn's events as they happen, to its `final` (or `error`) event, across dropped connections."""
        key = idempotency_key or str(uuid.uuid4())
        url = f"/v1/conversations/{conversation_id}/turns"
        last_id: str | None = None
        deadline = time.monotonic() + self.retry_for
        while True:
            headers = {"Idempotency-Key": key, "Accept": "text/event-stream"}
            if last_id is not None:
                headers["Last-Event-ID"] = last_id
            try:
                async with self._http.stream("POST", url, json={"text": text}, headers=headers) as response:
                    if response.status_code == 204:  # resumed after the final event: nothing more
                        return
                    if response.status_code != 200:
                        await response.aread()
                        error = _error(response)
                        if response.status_code in RETRYABLE and time.monotonic() < deadline:
                            await asyncio.sleep(_wait(error))
                            continue
                        raise error
                    if not response.headers.get("content-type", "").startswith("text/event-stream"):
                        # Streaming switched off for this conversation: the reply comes whole.
                        await response.aread()
                        yield Event("final", orjson.loads(response.content))
                        return
                    async for event in _events(response.aiter_lines()):
                        last_id = event.id or last_id
                        yield event
                        if event.event in ("final", "error"):
                            return
            except httpx.TransportError:
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(0.5)
            # The stream ended before its final event: reconnect and resume after the last one seen.

    # Conversations.

    async def create_conversation(
        self,
        conversation_id: str | None = None,
        *,
        double_text: DoubleTextPolicy | None = None,
        slots: Mapping[str, str] | None = None,
        user: str | None = None,
    ) -> ConversationCreated:
        """Start a conversation; `slots` given with a server-side key are trusted, `user` is the end user it
        is for (their end-user token then continues it)."""
        body: dict[str, Any] = {"slots": dict(slots or {})}
        if conversation_id is not None:
            body["id"] = conversation_id
        if user is not None:
            body["user"] = user
        if double_text is not None:
            body["double_text"] = double_text
        response = await self._request("POST", "/v1/conversations", json=body)
        return ConversationCreated.model_validate_json(response.content)

    async def conversation(self, conversation_id: str) -> ConversationState:
        return await self._get(f"/v1/conversations/{conversation_id}", ConversationState)

    async def conversations(self, *, limit: int = 50, offset: int = 0, **filters: str) -> ConversationsPage:
        return await self._get(
            "/v1/conversations", ConversationsPage, params={"limit": limit, "offset": offset, **filters}
        )

    async def user_conversations(
        self, user: str, *, limit: int = 50, offset: int = 0, **filters: str
    ) -> ConversationsPage:
        """One end user's conversations (a server's key: any of its users; an end user's token: its own)."""
        return await self._get(
            f"/v1/users/{quote(user, safe='')}/conversations",
            ConversationsPage,
            params={"limit": limit, "offset": offset, **filters},
        )

    async def export_user(self, user: str) -> UserExport:
        """Everything held of one end user, as one document (their right of access)."""
        return await self._get(f"/v1/users/{quote(user, safe='')}/export", UserExport)

    async def erase_user(self, user: str) -> UserErased:
        """Erase everything held of one end user; the receipt says what went. Safe to send again (it is,
        after a lost connection): a second erasure finishes what a failure left."""
        response = await self._request(
            "DELETE", f"/v1/users/{quote(user, safe='')}", resend_on_transport_error=True
        )
        return UserErased.model_validate_json(response.content)

    async def user_memory(self, user: str) -> UserMemory:
        """What the bot remembers of one end user across conversations, and their consent."""
        return await self._get(f"/v1/users/{quote(user, safe='')}/memory", UserMemory)

    async def set_memory_consent(self, user: str, consented: bool) -> MemoryConsentPublic:
        """The end user's answer; False forgets everything remembered of them at once."""
        response = await self._request(
            "PUT", f"/v1/users/{quote(user, safe='')}/memory/consent", json={"consented": consented}
        )
        return MemoryConsentPublic.model_validate_json(response.content)

    async def remember(self, user: str, kind: str, value: str) -> MemoryItemPublic:
        """Correct or add one item of the end user's memory (they must have consented)."""
        response = await self._request(
            "PUT",
            f"/v1/users/{quote(user, safe='')}/memory/items/{quote(kind, safe='')}",
            json={"value": value},
        )
        return MemoryItemPublic.model_validate_json(response.content)

    async def forget(self, user: str, kind: str) -> None:
        """Forget one item of the end user's memory."""
        await self._request("DELETE", f"/v1/users/{quote(user, safe='')}/memory/items/{quote(kind, safe='')}")

    async def messages(self, conversation_id: str, *, limit: int = 50, offset: int = 0) -> MessagesPage:
        return await self._get(
            f"/v1/conversations/{conversation_id}/messages",
            MessagesPage,
            params={"limit": limit, "offset": offset},
        )

    async def end_conversation(self, conversation_id: str) -> ConversationEnded:
        response = await self._request("POST", f"/v1/conversations/{conversation_id}/end")
        return ConversationEnded.model_validate_json(response.content)

    async def erase_conversation(self, conversation_id: str) -> None:
        """Erase a conversation and everything kept of it (admin scope)."""
        await self._request("DELETE", f"/v1/conversations/{conversation_id}")

    # Lineage and feedback.

    async def lineage(self, conversation_id: str, turn_id: str) -> TurnLineage:
        return await self._get(f"/v1/conversations/{conversation_id}/turns/{turn_id}/lineage", TurnLineage)

    async def rate(
        self, conversation_id: str, turn_id: str, rating: str, comment: str | None = None
    ) -> FeedbackPublic:
        response = await self._request(
            "POST",
            f"/v1/conversations/{conversation_id}/turns/{turn_id}/feedback",
            json={"rating": rating, "comment": comment},
        )
        return FeedbackPublic.model_validate_json(response.content)

    async def tool_result(self, conversation_id: str, call_id: str) -> ToolResultPublic:
        return await self._get(
            f"/v1/conversations/{conversation_id}/tool-results/{call_id}", ToolResultPublic
        )

    # Handoff and approvals (an update: sent again with the same key, it runs once).

    async def hand_off(
        self,
        conversation_id: str,
        *,
        agent: str | None = None,
        reason: str | None = None,
        idempotency_key: str | None = None,
    ) -> ConversationState:
        return await self._update(
            f"{conversation_id}/handoff",
            _present(agent=agent, reason=reason),
            idempotency_key,
            ConversationState,
        )

    async def send_agent_message(
        self, conversation_id: str, text: str, *, agent: str | None = None, idempotency_key: str | None = None
    ) -> AgentMessageReply:
        return await self._update(
            f"{conversation_id}/agent-messages",
            _present(text=text, agent=agent),
            idempotency_key,
            AgentMessageReply,
        )

    async def hand_back(
        self, conversation_id: str, *, agent: str | None = None, idempotency_key: str | None = None
    ) -> ConversationState:
        return await self._update(
            f"{conversation_id}/handback", _present(agent=agent), idempotency_key, ConversationState
        )

    async def decide_approval(
        self,
        conversation_id: str,
        call_id: str,
        approve: bool,
        *,
        note: str | None = None,
        idempotency_key: str | None = None,
    ) -> ApprovalReply:
        return await self._update(
            f"{conversation_id}/approvals/{call_id}",
            {"approve": approve, "note": note},
            idempotency_key,
            ApprovalReply,
        )

    # Knowledge base and keys (admin scope), and who is calling.

    async def add_document(
        self,
        document_id: str,
        text: str,
        *,
        content_type: ContentType = "markdown",
        title: str | None = None,
        source: str | None = None,
    ) -> DocumentStored:
        body = {
            "id": document_id,
            "text": text,
            "content_type": content_type,
            "title": title,
            "source": source,
        }
        response = await self._request("POST", "/v1/knowledge/documents", json=body)
        return DocumentStored.model_validate_json(response.content)

    async def documents(self, *, limit: int = 50, offset: int = 0) -> DocumentsPage:
        return await self._get(
            "/v1/knowledge/documents", DocumentsPage, params={"limit": limit, "offset": offset}
        )

    async def document(self, document_id: str) -> DocumentPublic:
        return await self._get(f"/v1/knowledge/documents/{document_id}", DocumentPublic)

    async def delete_document(self, document_id: str) -> None:
        await self._request("DELETE", f"/v1/knowledge/documents/{document_id}")

    async def create_key(
        self, scope: Scope, *, name: str | None = None, expires_in_days: float | None = None
    ) -> KeyCreated:
        body = {"scope": scope, "name": name, "expires_in_days": expires_in_days}
        response = await self._request("POST", "/v1/keys", json=body)
        return KeyCreated.model_validate_json(response.content)

    async def create_end_user_token(self, user: str, *, ttl_seconds: int = 900) -> EndUserToken:
        """A short-lived token for one end user of the key's tenant, for that user's browser or app."""
        body = {"user": user, "ttl_seconds": ttl_seconds}
        response = await self._request("POST", "/v1/end-user-tokens", json=body)
        return EndUserToken.model_validate_json(response.content)

    async def keys(self) -> list[KeyPublic]:
        response = await self._request("GET", "/v1/keys", resend_on_transport_error=True)
        return _KEYS.validate_json(response.content)

    async def revoke_key(self, key_id: str) -> None:
        await self._request("DELETE", f"/v1/keys/{key_id}")

    async def me(self) -> Caller:
        return await self._get("/v1/me", Caller)

    # The exchange: one request, sent again as the API asks.

    async def _get(self, path: str, model: type[M], params: Mapping[str, Any] | None = None) -> M:
        response = await self._request("GET", path, params=params, resend_on_transport_error=True)
        return model.model_validate_json(response.content)

    async def _update(self, path: str, body: dict[str, Any], key: str | None, model: type[M]) -> M:
        response = await self._request(
            "POST",
            f"/v1/conversations/{path}",
            json=body,
            headers={"Idempotency-Key": key or str(uuid.uuid4())},
            resend_on=(*RETRYABLE, 504),
        )
        return model.model_validate_json(response.content)

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        resend_on: tuple[int, ...] = RETRYABLE,
        resend_on_transport_error: bool = False,
    ) -> httpx.Response:
        deadline = time.monotonic() + self.retry_for
        while True:
            try:
                response = await self._http.request(method, path, json=json, params=params, headers=headers)
            except httpx.TransportError as err:
                # Only what is safe to do twice: a read, or a request with an idempotency key.
                safe = resend_on_transport_error or bool(headers and "Idempotency-Key" in headers)
                if not safe or time.monotonic() >= deadline:
                    raise DialogueError(0, "unreachable", f"{method} {path}: {err!r}") from err
                self.resent[0] += 1
                await asyncio.sleep(0.5)
                continue
            if response.is_success:
                return response
            error = _error(response)
            if response.status_code not in resend_on or time.monotonic() + _wait(error) >= deadline:
                raise error
            self.resent[response.status_code] += 1
            await asyncio.sleep(_wait(error))


_KEYS = TypeAdapter(list[KeyPublic])


def _present(**fields: Any) -> dict[str, Any]:
    """A body of the fields given: one left out takes the API's default."""
    return {name: value for name, value in fields.items() if value is not None}


def _error(response: httpx.Response) -> DialogueError:
    try:
        detail = response.json()["error"]
        code, message = str(detail["code"]), str(detail["message"])
    except (ValueError, KeyError, TypeError):
        code, message = "http_error", response.text[:500]
    retry_after = response.headers.get("Retry-After")
    seconds = float(retry_after) if retry_after and retry_after.replace(".", "", 1).isdigit() else None
    return DialogueError(response.status_code, code, message, seconds)


def _wait(error: DialogueError) -> float:
    if error.status == 504:
        return 0.0  # the turn runs on: ask again at once, the API waits for it
    return min(error.retry_after if error.retry_after is not None else 1.0, LONGEST_WAIT)


async def _events(lines: AsyncIterator[str]) -> AsyncIterator[Event]:
    """Server-sent events from a stream's lines (the `event`, `data` and `id` fields)."""
    name, event_id = "message", None
    data: list[str] = []
    async for line in lines:
        if not line:
            if data:
                yield Event(name, orjson.loads("\n".join(data)), event_id)
            name, data, event_id = "message", [], None
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
            elif field == "id":
                event_id = value
    if data:
        yield Event(name, orjson.loads("\n".join(data)), event_id)


def _blocking(
    method: Callable[Concatenate[AsyncDialogueClient, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[DialogueClient, P], T]:
    def call(self: DialogueClient, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._loop.run_until_complete(method(self._async, *args, **kwargs))

    call.__name__ = method.__name__
    call.__doc__ = method.__doc__
    return call


class DialogueClient:
    """The v1 API at `base_url` with an API key or token, blocking (not for use inside async code)."""

    def __init__(
        self, base_url: str, key: str, *, timeout: float = 60.0, retry_for: float = DEFAULT_RETRY_FOR
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._async = AsyncDialogueClient(base_url, key, timeout=timeout, retry_for=retry_for)

    def __enter__(self) -> DialogueClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._loop.run_until_complete(self._async.aclose())
        self._loop.close()

    def stream_turn(
        self, conversation_id: str, text: str, *, idempotency_key: str | None = None
    ) -> Iterator[Event]:
        """A turn's events as they happen, to its `final` (or `error`) event, across dropped connections."""
        events = self._async.stream_turn(conversation_id, text, idempotency_key=idempotency_key)
        try:
            while True:
                try:
                    yield self._loop.run_until_complete(events.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            self._loop.run_until_complete(events.aclose())

    send_turn = _blocking(AsyncDialogueClient.send_turn)
    queue_turn = _blocking(AsyncDialogueClient.queue_turn)
    read_turn = _blocking(AsyncDialogueClient.read_turn)
    create_conversation = _blocking(AsyncDialogueClient.create_conversation)
    conversation = _blocking(AsyncDialogueClient.conversation)
    conversations = _blocking(AsyncDialogueClient.conversations)
    user_conversations = _blocking(AsyncDialogueClient.user_conversations)
    export_user = _blocking(AsyncDialogueClient.export_user)
    erase_user = _blocking(AsyncDialogueClient.erase_user)
    user_memory = _blocking(AsyncDialogueClient.user_memory)
    set_memory_consent = _blocking(AsyncDialogueClient.set_memory_consent)
    remember = _blocking(AsyncDialogueClient.remember)
    forget = _blocking(AsyncDialogueClient.forget)
    messages = _blocking(AsyncDialogueClient.messages)
    end_conversation = _blocking(AsyncDialogueClient.end_conversation)
    erase_conversation = _blocking(AsyncDialogueClient.erase_conversation)
    lineage = _blocking(AsyncDialogueClient.lineage)
    rate = _blocking(AsyncDialogueClient.rate)
    tool_result = _blocking(AsyncDialogueClient.tool_result)
    hand_off = _blocking(AsyncDialogueClient.hand_off)
    send_agent_message = _blocking(AsyncDialogueClient.send_agent_message)
    hand_back = _blocking(AsyncDialogueClient.hand_back)
    decide_approval = _blocking(AsyncDialogueClient.decide_approval)
    add_document = _blocking(AsyncDialogueClient.add_document)
    documents = _blocking(AsyncDialogueClient.documents)
    document = _blocking(AsyncDialogueClient.document)
    delete_document = _blocking(AsyncDialogueClient.delete_document)
    create_key = _blocking(AsyncDialogueClient.create_key)
    keys = _blocking(AsyncDialogueClient.keys)
    revoke_key = _blocking(AsyncDialogueClient.revoke_key)
    me = _blocking(AsyncDialogueClient.me)
