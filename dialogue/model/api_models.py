"""The v1 API's own request and response models (the workflow's messages, which it also answers with, are
in `dialogue.model.contracts`): the HTTP contract that the API serves and `dialogue.apps.client` speaks. Like the
contracts, it imports nothing of the project but them."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

from dialogue.model.contracts import (
    EVENT_NAME,
    USER_PATTERN,
    ContentType,
    DoubleTextPolicy,
    EventReply,
    Scope,
    TurnReply,
)

# Conversation and document ids become parts of workflow ids and URLs: keep them to a safe alphabet.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
ConversationId = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
EndUserId = Annotated[str, StringConstraints(pattern=USER_PATTERN)]
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]+$"
MAX_OFFSET = 2**31 - 1
"""The furthest a page may start: the stores take it as a 64-bit integer, and no list is this long."""


# Text a person wrote: at least one character that is not white space. Its longest length is a setting
# (`DIALOGUE_MAX_TEXT_CHARS`): the served OpenAPI document writes it in (api/openapi.py).
NonBlankText = Annotated[str, StringConstraints(min_length=1, pattern=r"\S")]


def _whole(value: Any) -> Any:
    """JSON has one number type: 900.0 is the integer 900 (JSON Schema agrees); 900.5 stays refused."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


WholeNumber = Annotated[int, BeforeValidator(_whole)]
"""An integer in a strict request body: written as 900 or 900.0, never as "900"."""


class RequestModel(BaseModel):
    """A request body: its JSON types are taken as the schema says (no `0` for false, no `"5"` for 5)."""

    model_config = ConfigDict(strict=True)


class TextToParse(RequestModel):
    text: NonBlankText = Field(description="The text to understand (not blank).")


class ConversationCreate(RequestModel):
    id: ConversationId | None = Field(
        default=None, description="Chosen by the client; generated when absent."
    )
    double_text: DoubleTextPolicy | None = Field(
        default=None,
        description="A turn sent while another runs: `enqueue` it, `reject` it (409), or `interrupt` the "
        "running one (the newest turn is answered); the setting's default when absent.",
    )
    slots: dict[
        Annotated[str, StringConstraints(max_length=100)], Annotated[str, StringConstraints(max_length=500)]
    ] = Field(
        default={},
        max_length=50,
        description="What is known before the first turn (a signed-in customer's order number, say): "
        "the dialogue's first slots, which flows fill from. Given with a server-side key they are trusted: "
        "what the user types never overwrites them (given with an end-user token, they count as typed).",
    )
    user: EndUserId | None = Field(
        default=None,
        description="The end user the conversation belongs to (a server-side key starting it for them); "
        "their end-user token then reaches it, no other user's does, and its tools act for them. An end "
        "user's own token starts conversations that belong to them, and may name only themselves.",
    )
    bot: BotName | None = Field(
        default=None,
        description="The bot that answers: one with a release (`dialogue bot release`), or the deployment's "
        "own; the deployment's when absent. Its version is chosen now (the stable one, or the canary for "
        "its share of conversations) and kept for the conversation's life.",
    )
    channel: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")] | None = Field(
        default=None,
        description="An integrator's webhook channel of the tenant (`DIALOGUE_CHANNELS`, platform `webhook`): "
        "the conversation's messages (its replies, a person's messages, reminders) are also POSTed there, "
        "signed, each once, retried, and dead-lettered when it cannot take them.",
    )


BotName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")]


class ConversationCreated(BaseModel):
    conversation_id: str
    status: str


class ConversationEnded(BaseModel):
    conversation_id: str
    status: str = "ended"


class ConversationSummary(BaseModel):
    conversation_id: str
    tenant: str
    status: str
    turn_count: int
    last_intent: str | None
    degraded_count: int
    """Answers that were a fallback (a step failed, or the deadline passed)."""
    created_at: datetime
    updated_at: datetime
    ended_reason: str | None


class ConversationsPage(BaseModel):
    items: list[ConversationSummary]
    total: int
    limit: int
    offset: int


class MessagePublic(BaseModel):
    turn_id: str
    turn_index: int
    role: str
    """`user`, `bot`, `agent` or `system`."""
    text: str
    author: str | None = None
    intent: str | None
    confidence: float | None
    degraded: bool
    sources: list[dict[str, Any]]
    created_at: datetime
    rating: str | None = None
    """`up` or `down` when the user rated this answer (`…/feedback`)."""


class MessagesPage(BaseModel):
    items: list[MessagePublic]
    total: int
    limit: int
    offset: int


class TurnCreate(RequestModel):
    """A user's turn as the API takes it."""

    text: NonBlankText = Field(description="What the user said (not blank).")
    wait: bool = Field(
        default=True,
        description="False: answer 202 at once and fetch the reply from the turn's URL.",
    )
    idempotency_key: (
        Annotated[str, StringConstraints(max_length=200, pattern=IDEMPOTENCY_KEY_PATTERN)] | None
    ) = Field(
        default=None, description="As the `Idempotency-Key` header, for clients that cannot set headers."
    )


class ApprovalCreate(RequestModel):
    """A decision on a tool call that waits for approval."""

    approve: bool = Field(description="True: the call runs; false: it does not, and the model is told.")
    note: str | None = Field(
        default=None, max_length=500, description="Why: kept in the answer's lineage, and the model reads it."
    )


class TurnAccepted(BaseModel):
    conversation_id: str
    turn_id: str
    status: Literal["accepted"] = "accepted"


class TurnStatus(BaseModel):
    conversation_id: str
    turn_id: str
    status: Literal["running", "completed", "failed"]
    reply: TurnReply | None = None
    error: str | None = None


class Caller(BaseModel):
    """Who the key or token is: what a page needs to know about its user."""

    tenant: str
    scope: str
    """`client`, `agent` or `admin`."""
    subject: str
    user: str | None = None
    """The end user, for an end-user token; None for a server-side key or token."""


class EndUserTokenCreate(RequestModel):
    user: EndUserId = Field(description="The end user, as the integrator knows them (an opaque id is best).")
    ttl_seconds: WholeNumber = Field(
        default=900, ge=60, le=3600, description="How long the token lives: an hour at most."
    )


class WidgetSessionCreate(RequestModel):
    visitor: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_-]{16,64}$",
        description="The id this browser was given before (the token's user without `visitor-`), to go on as"
        " the same visitor with their conversations; none for a new visitor.",
    )


class EndUserToken(BaseModel):
    token: str
    """`Authorization: Bearer <token>` for the end user's browser or app."""
    tenant: str
    user: str
    expires_at: datetime


class KeyCreate(RequestModel):
    scope: Scope
    name: Annotated[str, Field(max_length=200)] | None = None
    expires_in_days: Annotated[float, Field(gt=0, le=3650)] | None = None


class KeyPublic(BaseModel):
    id: str
    tenant: str
    scope: str
    name: str | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


class KeyCreated(KeyPublic):
    key: str = Field(description="The key itself: shown this once, stored only as a hash.")


class DocumentCreate(RequestModel):
    id: str = Field(pattern=ID_PATTERN, description="Stable id; sending the same id again updates it.")
    text: str = Field(min_length=1, description="The whole document.")
    content_type: ContentType = "markdown"
    title: str | None = Field(
        default=None, max_length=500, description="Taken from the document when absent."
    )
    source: str | None = Field(
        default=None, max_length=1000, description="Where it comes from (URL or path)."
    )


class DocumentStored(BaseModel):
    document_id: str
    version: int
    chunks: int
    changed: bool


class DocumentSummary(BaseModel):
    document_id: str
    title: str
    version: int
    chunk_count: int
    content_type: str
    source: str | None
    updated_at: datetime


class DocumentPublic(DocumentSummary):
    text: str


class DocumentsPage(BaseModel):
    items: list[DocumentSummary]
    total: int
    limit: int
    offset: int


class TurnLineage(BaseModel):
    conversation_id: str
    turn_id: str
    turn_index: int
    reply: str
    degraded: bool
    lineage: dict[str, Any] | None
    feedback: FeedbackPublic | None = None


class FeedbackCreate(RequestModel):
    rating: Literal["up", "down"]
    comment: Annotated[str, Field(max_length=2000)] | None = None


class FeedbackPublic(BaseModel):
    turn_id: str
    rating: str
    comment: str | None
    created_at: datetime


class ToolResultPublic(BaseModel):
    """The whole result of an agent's tool call that was too long for the model (its lineage says `stored`)."""

    conversation_id: str
    call_id: str
    name: str
    size: int
    sha256: str
    result: Any
    created_at: datetime


class BotVersionPublic(BaseModel):
    """A published version of a bot: its files' digests, its model, its tests, the knowledge it was tested
    with and its model card (`manifest`)."""

    bot: str
    version: str
    created_at: datetime
    created_by: str
    manifest: dict[str, Any]


class BotReleasePublic(BaseModel):
    """Which version new conversations of a bot get."""

    bot: str
    stable: str
    canary: str | None
    canary_percent: float
    move_running: bool
    previous: list[str]
    updated_at: datetime
    updated_by: str


class BotReleaseEntry(BaseModel):
    """One release or rollback, from the audit log."""

    at: datetime
    actor: str
    action: str
    detail: dict[str, Any]


class BotPublic(BaseModel):
    bot: str
    release: BotReleasePublic | None
    versions: list[BotVersionPublic]
    history: list[BotReleaseEntry] = []


class ReleaseCreate(RequestModel):
    version: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{4,64}$")] = Field(
        description="The version (its digest, or a prefix of it naming one)."
    )
    percent: float = Field(
        default=100,
        gt=0,
        le=100,
        description="100: the stable version; less: the canary, for this share of new conversations.",
    )
    move_running: bool = Field(
        default=False,
        description="Move running conversations too, at their next turn (an urgent fix); otherwise each "
        "keeps the version it started with.",
    )
    reason: Annotated[str, StringConstraints(max_length=500)] | None = None


class RollbackCreate(RequestModel):
    move_running: bool = Field(default=False, description="As for a release.")
    reason: Annotated[str, StringConstraints(max_length=500)] | None = None


class SatisfactionCreate(RequestModel):
    score: WholeNumber = Field(
        ge=1, le=5, description="The user's score of the whole conversation: 1 (poor) to 5."
    )
    comment: Annotated[str, Field(max_length=2000)] | None = None


class SatisfactionPublic(BaseModel):
    conversation_id: str
    score: int
    comment: str | None
    bot: str
    version: str
    """The version the conversation was on when it was scored: its numbers count the score."""
    created_at: datetime


class ExportedMessage(MessagePublic):
    """A message as an end user's export gives it: for an answer, its lineage too (what it stood on)."""

    lineage: dict[str, Any] | None = None


class ExportedConversation(BaseModel):
    conversation_id: str
    status: str
    turn_count: int
    last_intent: str | None
    created_at: datetime
    updated_at: datetime
    ended_reason: str | None
    messages: list[ExportedMessage]
    """The transcript, oldest first: the user's words, the bot's answers, a person's replies."""
    feedback: list[FeedbackPublic]
    """The user's ratings of answers, with their comments."""
    satisfaction: SatisfactionPublic | None
    tool_results: list[ToolResultPublic]
    """The whole results of tool calls kept for the conversation (too long for the model)."""


MEMORY_KIND_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"


class MemoryItemPublic(BaseModel):
    """One thing remembered of an end user, and where it was learnt."""

    kind: str
    """What it is: `name`, `city`, `language`, `order` (the built-in bot's), or the integrator's own."""
    value: str
    source: Literal["user", "model", "tool", "api"]
    """Said by the user in a turn (read by the bot's rules), kept by the model (the agent's `remember`),
    returned by a tool, or set over the API."""
    conversation_id: str | None
    """The conversation it was said in, when it was."""
    turn_id: str | None
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None
    """When retention forgets it unless it is said again (the bot's `privacy.retention_days`)."""


class MemoryConsentPublic(BaseModel):
    """Whether the end user lets the bot remember them across conversations; `null` before they answered
    (no memory then)."""

    consented: bool | None
    at: datetime | None = None
    by: str | None = None
    forgotten: int = 0
    """Items forgotten by this change: all of them when consent is withdrawn."""


class UserMemory(BaseModel):
    """Everything remembered of one end user (`GET /v1/users/{user}/memory`)."""

    user: str
    consent: MemoryConsentPublic
    items: list[MemoryItemPublic]


class MemoryConsentUpdate(RequestModel):
    consented: bool = Field(description="true: remember me across conversations; false: forget me, and stop.")


class MemoryItemUpdate(RequestModel):
    value: Annotated[str, StringConstraints(min_length=1, max_length=500, strip_whitespace=True)] = Field(
        description="The value to remember (redacted as a turn's text is)."
    )


class UserExport(BaseModel):
    """Everything the deployment holds of one end user, as one document (`GET /v1/users/{user}/export`):
    for the user's right of access, and to take it elsewhere."""

    tenant: str
    user: str
    exported_at: datetime
    conversations: list[ExportedConversation]
    memory: UserMemory | None = None
    """What is remembered of them across conversations, and their consent."""


class UserErased(BaseModel):
    """The receipt of an end user's erasure (`DELETE /v1/users/{user}`): what was erased, and when."""

    tenant: str
    user: str
    erased_at: datetime
    conversations: list[str]
    """The ids of the conversations erased: their histories in Temporal and their rows in the store."""
    rows: dict[str, int]
    """The store's rows of the user themself that were deleted, by kind."""


class VersionNumbersPublic(BaseModel):
    """One version's numbers over the period: rates are shares of its turns."""

    bot: str
    version: str
    turns: int
    degraded: int
    degraded_rate: float
    fallback_rate: float
    out_of_scope_rate: float
    handoff_rate: float
    ratings: int
    rated_down: int
    rated_down_rate: float
    satisfaction_count: int
    satisfaction_mean: float | None
    p50_ms: float | None
    p99_ms: float | None


class BotNumbers(BaseModel):
    """A bot's numbers per version: the stable beside the canary, and every other version with turns."""

    bot: str
    since: datetime | None = Field(
        description="The start of the period (None: every recorded turn). Unless asked for, the canary's "
        "own period when there is one (since the release last changed): what the canary guard judges."
    )
    release: BotReleasePublic | None
    stable: VersionNumbersPublic | None
    canary: VersionNumbersPublic | None
    versions: list[VersionNumbersPublic]


class DeliveryPublic(BaseModel):
    """A message delivered (or being delivered, or given up) to a conversation's messaging platform."""

    id: str
    conversation_id: str
    """The client's id of the conversation."""
    channel: str
    status: Literal["sending", "sent", "dead"]
    """`sending`: an attempt is under way or will be retried; `dead`: given up, until an operator resends it."""
    attempts: int
    last_error: str | None = None
    platform_id: str | None = None
    text: str
    created_at: datetime
    updated_at: datetime


class ReminderCreate(RequestModel):
    """A message for the bot to send the user later, on its own."""

    text: NonBlankText = Field(description="What the bot will say (not blank).")
    in_seconds: float = Field(
        ge=5,
        le=365 * 86400,
        description="When: this long from now, a year at most (work it out from the user's own time). With "
        "`on_event`: how long it waits for the event at most (dropped, unsaid, if it has not come by then).",
    )
    on_event: str | None = Field(
        default=None,
        pattern=EVENT_NAME,
        description="Said when your system reports this event (`POST /v1/events`, e.g. `order-shipped:NW-105733`), "
        "not at a time.",
    )


class EventCreate(RequestModel):
    """Something happened in the integrator's system that conversations may be waiting for."""

    name: str = Field(pattern=EVENT_NAME, description="The event, as reminders name it in `on_event`.")


class EventOutcome(BaseModel):
    """What an event did: the conversations whose reminders it made due, with those reminders."""

    name: str
    conversations: list[EventReply] = []
