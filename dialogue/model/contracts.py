"""The messages a conversation speaks: one pydantic model per message.

The API uses them as request and response models, the workflow and the activities as
their arguments and results, so a field added here reaches every side at once. Every
field has a default or is required from the first version on: histories recorded
with an older shape must still decode when replayed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, cast

from pydantic import BaseModel, Field, computed_field

ConversationStatus = Literal["active", "ended", "failed"]
"""`failed`: the conversation's workflow failed, was terminated or timed out (the API's reading of Temporal;
the workflow itself never says it). Broken, not ended: `dialogue recover` brings it back."""
DoubleTextPolicy = Literal["enqueue", "reject", "interrupt"]
Scope = Literal["client", "agent", "admin", "operator"]
"""What a key or token may do: `agent` includes `client`, `admin` includes both (within its tenant), and
`operator` (the deployment's own, of the `default` tenant only) includes `admin` and may also write the
knowledge base and decode any tenant's payloads."""
ContentType = Literal["markdown", "text", "html"]
"""How a knowledge-base document is written."""
Holder = Literal["bot", "agent"]
Approver = Literal["agent", "user"]
"""Who approves a tool call: a person with the agent scope, or the user (the conversation's end user when
it has one, else a client key of its tenant)."""
USER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:|@-]{0,127}$"
ChannelPlatform = Literal["slack", "telegram", "whatsapp", "twilio", "webhook"]
"""The messaging platforms a conversation may be held on (`dialogue.platform.channels`), or `webhook`: the
integrator's own endpoint."""
"""An end user's id, as the integrator knows its user (an opaque id is best: the store's index keeps it in
the clear, to find a user's conversations). No spaces or control characters: it travels in a header."""

OUT_OF_SCOPE = "out_of_scope"
"""The intent of text that belongs to no intent of the bot."""
UNRECORDABLE = "Unrecordable"
"""The error type of a record activity whose data the store refuses for good (retrying cannot help)."""

# The conversation workflow's interface by name: the API and the CLI call it without importing
# the workflow's code (and with it the activities, the NLU and retrieval).
WORKFLOW_TYPE = "ConversationWorkflow"


class Updates:
    TURN = "turn"
    HANDOFF = "handoff"
    HANDBACK = "handback"
    AGENT_MESSAGE = "agent_message"
    APPROVE = "approve"
    REMIND = "remind"
    CANCEL_REMINDER = "cancel_reminder"
    EVENT = "event"


class Queries:
    STATE = "state"
    RECENT_TURN = "recent_turn"


class Signals:
    END = "end"


# The `ApplicationError` types the workflow refuses an update with; the API answers each with
# its own status (api/errors.py).
CONVERSATION_ENDED = "ConversationEnded"
INVALID_TURN = "InvalidTurn"
TURN_IN_PROGRESS = "TurnInProgress"
QUEUE_FULL = "TurnQueueFull"
NOT_HANDED_OFF = "NotHandedOff"
STORE_BEHIND = "StoreBehind"
NO_SUCH_APPROVAL = "NoSuchApproval"
APPROVAL_DECIDED = "ApprovalDecided"
APPROVAL_FORBIDDEN = "ApprovalForbidden"
NOT_YOUR_CONVERSATION = "NotYourConversation"
NO_SUCH_REMINDER = "NoSuchReminder"
INVALID_REMINDER = "InvalidReminder"
REMINDERS_FULL = "RemindersFull"
"""An end user's request to a conversation that is not theirs: answered as if it did not exist."""


class ConversationInput(BaseModel):
    """What a conversation workflow starts with."""

    conversation_id: str
    """The client's id for the conversation."""
    tenant: str = "default"
    max_text_chars: int = 4000
    """Longest user text a turn accepts; checked by the update validator."""
    idle_timeout_seconds: float = 24 * 3600
    """The conversation ends itself after this long without a turn."""
    turn_deadline_seconds: float = 20
    """A reply not ready in this time is replaced by a fallback marked `degraded`."""
    double_text: DoubleTextPolicy = "enqueue"
    """What happens to a turn that arrives while another runs: `enqueue` it, or `reject` it (409)."""
    max_queued_turns: int = 10
    """Turns running or waiting at most; more are refused (429). Temporal allows 10 updates in flight."""
    turns_per_run: int = 200
    """Messages (turns, agent messages, handoffs) one run takes before it continues as new, keeping
    its history small; far below Temporal's 2,000 updates per run."""
    carried: CarriedState | None = None
    """What the previous run handed over at continue-as-new; None in a conversation's first run."""
    slots: dict[str, Any] = {}
    """What is known before the first turn (the signed-in customer's id, say): the dialogue's first slots."""
    trusted_slots: list[str] = []
    """The slots of `slots` the integrator's server set (not an end user): typed text never overwrites them."""
    user: str | None = None
    """The verified end user the conversation belongs to (an end-user token, or the integrator's server
    naming them at start); None: the integrator's server speaks for its tenant. Tools act for this user."""
    bot: str | None = None
    """The bot that answers (its name); None in conversations started before bots were versioned: the
    worker's own bot."""
    bot_version: str | None = None
    """The version of `bot` the conversation is pinned to (`dialogue.platform.releases`); None: the
    worker's own bot folder."""
    channel: ChannelAddress | None = None
    """The messaging platform the conversation is held on, and where on it: its replies and a person's
    messages are delivered there (`deliver`). None: the client reads the replies from the API."""

    @property
    def key(self) -> str:
        """Tenant-qualified: what the store and the event log know the conversation by."""
        return f"{self.tenant}/{self.conversation_id}"


class ChannelAddress(BaseModel):
    """Where on a messaging platform a conversation's messages go."""

    channel: str
    """The channel's name in the deployment's configuration (`DIALOGUE_CHANNELS`): its platform and credentials."""
    platform: ChannelPlatform
    to: str
    """The chat, the Slack channel, the WhatsApp user or the phone number that receives the messages."""
    thread: str | None = None
    """The Slack thread (its first message's `ts`) the conversation is."""
    sender: str | None = None
    """Ours on the platform, where it has several: the number an SMS was sent to (the reply comes from it)."""


class Button(BaseModel):
    """A button under a message on a channel. Pressed, it is `say` (the user's next message is `value`), or
    `approve` / `deny` (a decision on the tool call `value` that waits for the user's approval)."""

    title: str
    action: Literal["say", "approve", "deny"]
    value: str

    @property
    def payload(self) -> str:
        """What the platform hands back when the button is pressed (`Button.pressed` reads it)."""
        return f"{self.action}:{self.value}"

    @classmethod
    def pressed(cls, payload: str, title: str = "") -> Button | None:
        """The button a platform's press payload names; None for a payload not ours."""
        action, _, value = payload.partition(":")
        if action not in ("say", "approve", "deny") or not value:
            return None
        return cls(title=title or value, action=cast(Literal["say", "approve", "deny"], action), value=value)


class Delivery(BaseModel):
    """One message for a conversation's channel: a reply, or a person's message."""

    id: str
    """Stable for the event it carries (the conversation, then the turn or message): the same delivery
    again (a retried activity, an operator's resend) is recognised in the deliveries' ledger."""
    conversation_id: str
    """Tenant-qualified (`ConversationInput.key`)."""
    address: ChannelAddress
    text: str
    buttons: list[Button] = []
    """What the user may tap under the message, where the platform has buttons: quick replies, an
    approval's Approve and Deny."""
    sources: list[Source] = []
    """The documents a reply stands on, listed under it where the platform has room."""
    resend: bool = False
    """An operator's resend of a dead letter: sent again whatever the ledger says."""


class Delivered(BaseModel):
    """What became of a delivery: `sent` (the platform took it), or `dead` (it never will: kept in the
    dead-letter list, where an operator can resend it)."""

    status: Literal["sent", "dead"]
    platform_id: str | None = None
    """The platform's id of the message sent."""


class TurnRequest(BaseModel):
    """A user's turn, as the API receives it and the workflow's `turn` update takes it."""

    text: str = Field(description="What the user said.")
    stream: bool = False
    """Write the turn's progress (NLU, sources, tokens) to the event log for an SSE client."""
    flags: dict[str, bool] = {}
    """The conversation's feature flags (`dialogue.platform.flags`), evaluated by the API for this turn. Empty in
    turns sent before flags existed: each flag then keeps the behaviour it had before."""
    user: str | None = None
    """The verified end user who sends the turn (their token); None: a server-side key of the tenant. The
    workflow refuses a turn whose user is not the conversation's."""
    bot_versions: dict[str, str] = {}
    """Bots released with `move_running`: the version each has for this conversation now. A running
    conversation of one of them moves to it at this turn (an urgent fix); otherwise it keeps its own."""


class HandoffRequest(BaseModel):
    """The `handoff` update: a person takes the conversation over from the bot."""

    agent: str | None = Field(default=None, max_length=200)
    """Who takes over, when known (an agent's name or id)."""
    reason: str = Field(default="requested", max_length=200)


class HandbackRequest(BaseModel):
    """The `handback` update: the bot answers again."""

    agent: str | None = Field(default=None, max_length=200)


class AgentMessageRequest(BaseModel):
    """The `agent_message` update: a person's reply to the user while the conversation is handed off."""

    text: str = Field(min_length=1, pattern=r"\S", description="What the person says (not blank).")
    agent: str | None = Field(default=None, max_length=200)


class AgentMessageReply(BaseModel):
    conversation_id: str
    turn_index: int
    """Agent messages take a place in the transcript's order like turns."""
    agent: str | None = None
    at: datetime


EVENT_NAME = r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,63}$"
"""An event the integrator's system reports (`order-shipped:NW-105733`): no spaces, so that it is one
keyword of the conversation's search attribute `DialogueAwaits`; 64 characters at most, so that the
names a conversation's 20 reminders may wait for stay within Temporal's 2 KB for an attribute's value."""


class ReminderRequest(BaseModel):
    """The `remind` update: a message the bot sends the user later, on its own, at `due_at`; or, with
    `on_event`, when the integrator reports that event, if it does by `due_at`."""

    text: str
    due_at: datetime
    by: str
    """Who asked for it: a key's or token's subject, or `tool:<name>` for a bot's tool."""
    on_event: str | None = Field(default=None, pattern=EVENT_NAME)


class Reminder(BaseModel):
    """A message scheduled in the conversation: a durable timer, kept across continue-as-new."""

    id: str
    text: str
    due_at: datetime
    """When it is said; for one `on_event`, when it stops waiting for the event (and is dropped, unsaid)."""
    by: str
    on_event: str | None = None
    """Said when the integrator reports this event (`POST /v1/events`), not at a time."""


class ReminderTool(BaseModel):
    """What a bot's tool puts in its result as `remind` to have the bot follow up later: in `in_seconds`,
    or when the event `on_event` is reported (waiting `in_seconds` for it at most)."""

    text: str
    in_seconds: float = Field(gt=0)
    on_event: str | None = Field(default=None, pattern=EVENT_NAME)


class EventRequest(BaseModel):
    """The `event` update: the integrator's system reports that something happened."""

    name: str = Field(pattern=EVENT_NAME)


class EventReply(BaseModel):
    """What the event did in one conversation: the reminders it made due (said next, in order)."""

    conversation_id: str
    reminders: list[str] = []


class CancelReminderRequest(BaseModel):
    id: str


class EndRequest(BaseModel):
    """The `end` signal."""

    reason: str = "ended_by_client"


class IntentPrediction(BaseModel):
    name: str
    confidence: float = Field(ge=0, le=1)


class Entity(BaseModel):
    entity: str
    value: str
    start: int
    end: int


class Sentiment(BaseModel):
    label: Literal["positive", "neutral", "negative"]
    score: float = Field(ge=-1, le=1)
    """From -1 (most negative) to 1 (most positive)."""


class Routing(BaseModel):
    """How likely each way of answering a message is: from the knowledge base, by the intent the NLU found,
    or declined as out of scope (the trained router's calibrated probabilities, `dialogue.brain.nlu.routing`)."""

    knowledge: float = Field(ge=0, le=1)
    intent: float = Field(ge=0, le=1)
    out_of_scope: float = Field(ge=0, le=1)
    document_id: str | None = None
    """The document of the best passage the router saw."""

    @property
    def best(self) -> Literal["knowledge", "intent", "out_of_scope"]:
        """The likeliest route (the knowledge base first on a tie: it cites what it says)."""
        if self.knowledge >= max(self.intent, self.out_of_scope):
            return "knowledge"
        return "intent" if self.intent >= self.out_of_scope else "out_of_scope"


class NluResult(BaseModel):
    """What `understand` made of the user's text."""

    intent: IntentPrediction
    ranking: list[IntentPrediction] = []
    """The likeliest intents, best first (the trained model only)."""
    entities: list[Entity] = []
    sentiment: Sentiment | None = None
    action: str = "answer"
    """What the bot definition says to do with this intent: `respond` from templates, `answer` from the knowledge base."""
    model: str | None = None
    """Which model decided: `keywords`, or `trained:<content hash>` (for lineage)."""
    routing: Routing | None = None
    """Where the router sent the message, once the knowledge base was searched (a trained model with a
    router only); the policy follows it."""


class MemoryOffer(BaseModel):
    """What a reply offered to remember of the end user (`memory.ask`), until their next message says
    yes or no: the facts their message stated, by kind, as stored (redacted)."""

    facts: dict[str, str]
    turn_id: str | None = None
    """The turn that stated them: each item's source once kept."""
    question: str = ""
    """What the reply ends with to ask."""


class DialogueState(BaseModel):
    """The part of a conversation's state that the dialogue policy reads and changes."""

    active_flow: str | None = None
    slots: dict[str, Any] = {}
    requested_slot: str | None = None
    """The slot the bot last asked for."""
    trusted: list[str] = []
    """Slots the integrator's server set: what the user types never overwrites them."""
    last_topic: str | None = None
    """The intent the previous turn was about: what a follow-up ("and to Austria?") continues."""
    last_action: str | None = None
    """What the bot did in the previous turn (`answer`, `respond`, a flow step, …)."""
    memory_offer: MemoryOffer | None = None
    """The previous reply asked whether these facts may be remembered: this message may answer."""


class UnderstandRequest(BaseModel):
    text: str
    dialogue: DialogueState = DialogueState()
    agent_mode: bool = False
    """The `agent` flag: a bot with `mode: agent` hands the agent what its scripts are unsure of."""


Action = Literal[
    "respond",
    "answer",
    "clarify",
    "fallback",
    "flow_prompt",
    "flow_complete",
    "flow_cancel",
    "handoff",
    "end",
    "agent",
]


class ToolCall(BaseModel):
    name: str
    arguments: dict[str, Any] = {}
    user: str | None = None
    """The conversation's verified end user, whom the tool acts for (set by the workflow, never the policy)."""


class ToolResult(BaseModel):
    ok: bool
    data: dict[str, Any] = {}
    retry_slot: str | None = None
    """When the call failed for a slot's value (an unknown order id): the slot to ask for again."""


class MemoryUse(BaseModel):
    """An item of the end user's memory a reply used, and where it was learnt."""

    id: str
    kind: str
    source: str
    """`user` (said in a turn), `model`, `tool` or `api`."""
    conversation_id: str | None = None
    """The conversation it was said in (the store's key), when it was."""
    turn_id: str | None = None


class Decision(BaseModel):
    """What the dialogue policy decided for a turn; the workflow applies it, `generate` words it."""

    action: Action
    flow: str | None = None
    """The flow the turn belongs to or continues."""
    dialogue: DialogueState = DialogueState()
    """The dialogue state after this turn."""
    invalid_slot: str | None = None
    """A slot whose value the user gave but which failed validation."""
    tool: ToolCall | None = None
    resume_flow: bool = False
    """The turn answered another topic while a flow waits: remind the user of the flow's question."""
    topic: str | None = None
    """For a follow-up the NLU could not place ("and to Austria?"): the intent of the turn it continues."""
    answer_first: bool = False
    """A flow's first question comes after what the knowledge base answers to the message (`Flow.answer_first`)."""
    remembered: dict[str, MemoryUse] = {}
    """Slots the end user's memory filled (`SlotSpec.remembered`), by slot: the reply says so."""
    memory_offer: MemoryOffer | None = None
    """The reply asks whether what the user said of themself may be remembered (`memory.ask`): the next
    message may answer."""


class Understanding(BaseModel):
    """The `understand` step's result: what the user said, and what to do about it."""

    nlu: NluResult
    decision: Decision
    needs_knowledge: bool = True
    """Whether the reply is made from the knowledge base (an answer, the agent): if not (a template, a
    flow's question), the turn skips retrieval. True in results recorded before it was known."""


class Passage(BaseModel):
    """A piece of a knowledge-base document that retrieval found."""

    document_id: str
    title: str
    text: str
    score: float
    """The fused rank score (reciprocal-rank fusion of the lexical and semantic rankings)."""
    url: str | None = None
    chunk_id: str | None = None
    heading: str = ""
    document_version: int | None = None
    lexical_score: float = 0.0
    """BM25 score; 0 when no query word occurs in the passage."""
    semantic_score: float | None = None
    """Cosine similarity of query and passage embeddings; None without the embeddings extra."""


class RetrieveRequest(BaseModel):
    text: str
    top_k: int = 3
    previous: str | None = None
    """The question the previous turn searched with: a follow-up is made standalone from it."""
    standalone: str | None = None
    """The question to search with, when the `rewrite_query` step made it (the LLM)."""


class RetrieveResult(BaseModel):
    passages: list[Passage] = []
    query: str | None = None
    """What was searched with, when it is not the user's text (a follow-up made standalone)."""


class RewriteRequest(BaseModel):
    """Make a follow-up standalone for retrieval: "and to Austria?" after a question about express shipping."""

    text: str
    previous: str
    """The previous turn's question (as it searched)."""
    previous_reply: str = ""
    variant: bool = False
    redact: bool = True


class RewriteResult(BaseModel):
    query: str
    generator: str
    """`heuristic`, or `openai:<model>`."""


class Source(BaseModel):
    """A citation of the reply: which document it stands on."""

    document_id: str
    title: str
    url: str | None = None
    snippet: str
    score: float
    chunk_id: str | None = None
    document_version: int | None = None


class StreamTarget(BaseModel):
    """Where `generate` writes a streamed turn's events: the conversation's event log, under the turn's id."""

    conversation_id: str
    turn_id: str


class OfferedTool(BaseModel):
    """A tool as the agent offers it to the model and runs it: one the bot declares, or one an MCP server
    lists (`list_mcp_tools`)."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = {"type": "object", "properties": {}}
    kind: Literal["python", "http", "mcp", "memory"] = "python"
    server: str | None = None
    """For an MCP tool: the bot's name for the server that lists it."""
    approval: Literal["none", "agent", "user"] = "none"
    timeout_seconds: float = 10
    attempts: int = 3
    refused: str | None = None
    """Why the tool is not offered although listed (an MCP server changed it since it was pinned): the
    model is not told of it, and a call of it is refused with this."""


class McpToolList(BaseModel):
    """The tools the bot's MCP servers offer (allowed ones only), and the servers that could not be listed."""

    tools: list[OfferedTool] = []
    unavailable: dict[str, str] = {}
    """Server name to why it could not be listed: its tools are left out of this turn."""


class AgentToolCall(BaseModel):
    """A tool call the model asked for, checked against the tool's declaration."""

    call_id: str
    name: str
    kind: Literal["python", "http", "mcp", "memory"] = "python"
    server: str | None = None
    conversation_id: str = ""
    """The conversation's key: a result too long for the model is kept in the store under it."""
    arguments: dict[str, Any] = {}
    idempotency_key: str = ""
    """A SHA-256 of the conversation, turn and call id: the same on every attempt, so a tool can do its effect
    once, and telling a third party neither the tenant nor the conversation."""
    timeout_seconds: float = 10
    attempts: int = 3
    invalid: str | None = None
    """Why the call is not made (no such tool, arguments against its schema): the model is told instead."""
    stream: StreamTarget | None = None
    """A streamed turn's event log: the call's result goes there (`tool_result`)."""
    approval: Approver | None = None
    """Who must approve the call before it runs (the tool's `approval`); None: no one."""
    approval_timeout_seconds: float = 900
    """Unanswered this long, the approval counts as denied."""
    redact: bool = True
    """The conversation's `redaction` flag: the result is kept and shown as the bot's privacy policy says."""
    user: str | None = None
    """The conversation's verified end user, whom the tool acts for: set by the workflow when the call runs,
    never from what the model asked."""


class ApprovalDecision(BaseModel):
    """How a call that needed approval was decided, and by whom (lineage keeps it)."""

    approved: bool
    by: str
    """The key or token that decided (its subject), or `timeout`."""
    role: Literal["agent", "user", "timeout"]
    note: str | None = None
    at: datetime


class PendingApproval(BaseModel):
    """A tool call waiting for a person's or the user's approval; the turn that asked for it has answered."""

    call_id: str
    turn_id: str
    """The turn whose agent waits."""
    name: str
    arguments: dict[str, Any] = {}
    approval: Approver
    requested_at: datetime
    expires_at: datetime
    """Unanswered by then, the call is denied."""


class ApprovalRequest(BaseModel):
    """The `approve` update: a decision on one pending call."""

    call_id: str
    approve: bool
    note: str | None = None
    by: str
    as_agent: bool = False
    """The caller has the agent scope: it may decide `agent` approvals (a client only `user` ones)."""
    user: str | None = None
    """The verified end user deciding (their token); None: a key of the tenant. A `user` approval of a
    conversation with an end user is theirs alone to decide."""


class AgentToolOutcome(BaseModel):
    """What a tool call gave: what the model is shown of it, and what lineage keeps."""

    call_id: str
    name: str
    ok: bool
    content: str = ""
    """The result as the model sees it (JSON, cut at the bot's `max_result_chars`), or the error."""
    size: int = 0
    """Bytes of the whole result."""
    sha256: str = ""
    arguments_sha256: str = ""
    error: str | None = None
    approval: ApprovalDecision | None = None
    """For a call that needed approval: who decided, how and when."""
    stored: bool = False
    """The result was longer than the model may see: the whole of it is in the store
    (`GET /v1/conversations/{id}/tool-results/{call_id}`), the model saw it cut."""
    attempt: int = 1
    """The attempt that gave this outcome (a retried call: a worker died, the service failed)."""
    duration_ms: float = 0.0
    """Of that attempt."""


class ModelCall(BaseModel):
    """One call of the agent's model, for lineage."""

    model: str
    """`openai:<model>`."""
    prompt_id: str | None = None
    prompt_hash: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    duration_ms: float = 0.0
    attempt: int = 1


class AgentStepRecord(BaseModel):
    """One model step of a turn that asked for tools, and what the tools gave."""

    text: str = ""
    calls: list[AgentToolCall] = []
    outcomes: list[AgentToolOutcome] = []
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    model_call: ModelCall | None = None


class RollingSummary(BaseModel):
    """The conversation's older turns folded into a few sentences, for LLM calls: what no longer fits the
    budget verbatim. Made by the `summarize` activity; kept in the workflow's state."""

    text: str
    version: int = 1
    """Grows with every fold: lineage names the version an answer saw."""
    through: int = 0
    """The turns before this place are in the summary; from it on, an LLM call sees them verbatim."""
    generator: str = "extractive"
    """`extractive` (no model) or `openai:<model>`."""
    prompt_id: str | None = None


class ContextRequest(BaseModel):
    """What an LLM call needs to see the conversation: the turns before `turn_index` are read from the
    transcript inside the activity (not carried through history), the summary comes with the request."""

    conversation_id: str
    """The tenant-qualified key, as the store knows the conversation."""
    turn_index: int
    user: str | None = None
    """The conversation's end user, whose memory a reply may use (None: none; turns sent before memory)."""
    summary: RollingSummary | None = None
    notes: list[str] = []
    """What the workflow knows the call should say in lineage (e.g. the last summary failed)."""


class SummarizeRequest(BaseModel):
    """Fold the turns from `previous.through` up to `through` into the conversation's summary."""

    conversation_id: str
    """The tenant-qualified key, as the store knows the conversation."""
    previous: RollingSummary | None = None
    through: int
    variant: bool = False
    """The `llm_variant` flag: the model and prompt of the bot's `llm.variant`."""
    redact: bool = True


class NoteMemoryRequest(BaseModel):
    """After a turn a model answered: let the model read the user's message for facts to remember."""

    conversation_id: str
    """The tenant-qualified key."""
    turn_id: str
    user: str
    user_text: str
    variant: bool = False
    """The `llm_variant` flag: the model of the bot's `llm.variant`."""
    redact: bool = True


class MemoryNoted(BaseModel):
    kept: list[str] = []
    """The kinds kept or corrected."""
    forgotten: list[str] = []
    skipped: str | None = None
    """Why nothing was read: no consent (withdrawn since the reply), no model."""


class ContextLineage(BaseModel):
    """What an LLM answer saw of the conversation; with the history, enough to build the request again."""

    turns: list[int] = []
    """Places of the transcript sent verbatim, oldest first."""
    dropped: list[int] = []
    """Places left out (over the budget) that the summary does not cover yet."""
    missing: list[int] = []
    """Places the transcript did not have (not recorded yet, or the store unavailable)."""
    summary_version: int | None = None
    summary_through: int | None = None
    context_tokens: int = 0
    """Summary, turns and current message, as counted before the call."""
    budget: int = 0
    tokenizer: str = ""
    """`o200k_base`, `cl100k_base` (exact), or `estimate` (four bytes a token)."""
    prompt_tokens: int | None = None
    """As the endpoint reported them."""
    completion_tokens: int | None = None
    truncated: bool = False
    """The current message alone exceeded the budget and was cut."""
    messages_sha256: str = ""
    retrieval_query: str | None = None
    """The standalone question retrieval searched with, when it differs from the message."""
    notes: list[str] = []
    remembered: list[str] = []
    """The end user's memory the model saw (`kind: value` lines): what rebuilds its request."""
    memory_notes: bool = False
    """The end user agreed to be remembered and the bot keeps notes by model (`memory.model_notes`): the
    workflow has the model read the turn for facts to keep, after the reply (`note_memory`)."""


class AgentStepRequest(BaseModel):
    """One model step of the agent: the conversation (read from the store inside the step), the turn's
    message and the steps it made so far."""

    text: str
    turn_id: str
    turn_index: int
    context: ContextRequest
    steps: list[AgentStepRecord] = []
    llm: bool | None = None
    variant: bool = False
    redact: bool = True
    stream: StreamTarget | None = None
    """Set when the client streams the turn: tokens, `tool_call` and `tool_result` events go to the log."""
    mcp_tools: list[OfferedTool] = []
    """What the bot's MCP servers offer this turn (listed once per turn, before its first step)."""
    passages: list[Passage] = []
    """What retrieval found for the turn's message: the model may answer from it (as data)."""


class AgentStep(BaseModel):
    """The model's answer (`reply`), or the tools it asks for (`calls`)."""

    reply: Reply | None = None
    calls: list[AgentToolCall] = []
    text: str = ""
    """What the model said beside its calls."""
    limit_reached: bool = False
    """The turn's step or tool-call limit made the model answer without tools."""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    model_call: ModelCall | None = None


class GenerateRequest(BaseModel):
    text: str
    turn_index: int
    nlu: NluResult
    passages: list[Passage] = []
    decision: Decision | None = None
    """None: decide from the NLU result alone (as before flows existed)."""
    tool_result: ToolResult | None = None
    stream: StreamTarget | None = None
    """Set when the client streams the turn: the NLU result, the sources and the tokens go to the event log."""
    llm: bool | None = None
    """The `llm_generator` flag: answer from the knowledge base with the LLM (True) or the grounded
    generator (False); None, the worker's configured generator (turns sent before flags existed)."""
    redact: bool = True
    """The `redaction` flag: False sends the user's words to an LLM as said, whatever the privacy policy."""
    context: ContextRequest | None = None
    """Set for conversations whose LLM calls see the conversation (not in turns sent before)."""
    variant: bool = False
    """The `llm_variant` flag: the bot's `llm.variant` settings instead of its `llm` ones."""
    query: str | None = None
    """The standalone question retrieval searched with, for a follow-up: what a generator that sees only
    the message (the grounded one) answers."""


class Reply(BaseModel):
    text: str
    sources: list[Source] = []
    quick_replies: list[str] = []
    """What the user may answer with a tap, where the channel has buttons (a clarifying question's
    choices): each is sent, pressed, as the user's message."""
    generator: str = "template"
    """What produced the text: `template`, `grounded`, or `openai:<model>`."""
    prompt_id: str | None = None
    prompt_hash: str | None = None
    context: ContextLineage | None = None
    """For an LLM answer: what it saw of the conversation."""
    data: dict[str, Any] | None = None
    """For a bot with `llm.response_format`: the structured reply, validated against its schema."""
    memory: list[MemoryUse] = []
    """The items of the end user's memory the reply used (a template's `{memory.name}`, their memory read
    out)."""


class RespondHereRequest(BaseModel):
    """The `respond_here` step: a turn's understanding, retrieval and reply in one local activity."""

    understand: UnderstandRequest
    retrieve: RetrieveRequest
    generate: GenerateRequest
    """Everything of the reply's request but what the step finds out (NLU, decision, passages, query)."""
    record: RecordHere | None = None
    """The turn's transcript entry as the workflow knows it: when the reply is made here, the step writes the
    entry itself; None: the workflow records the turn (its `record_turn` step)."""


class RecordHere(BaseModel):
    """What the transcript entry of a turn holds before its steps run. With it, `respond_here` writes the entry
    when it makes the reply, in the same local activity: the workflow's own `record_turn` step (a local
    activity, a workflow activation and a marker in history) is then not needed."""

    conversation_id: str
    """The conversation's key (`RecordTurnRequest.conversation_id`)."""
    turn_id: str
    turn_index: int
    user_text: str
    at: datetime
    flags: dict[str, bool] = {}
    bot: str | None = None
    bot_version: str | None = None
    handoff_allowed: bool = True
    """False: a handoff decision becomes a fallback in the workflow, whose reply is made there: not here."""
    user: str | None = None
    """The conversation's end user (`RecordTurnRequest.user`)."""


class RespondedHere(BaseModel):
    """What `respond_here` did: always the understanding; the passages when the reply is made from the
    knowledge base; the reply when it could be made here (not for a flow's tool, the agent or a model)."""

    understanding: Understanding
    retrieved: RetrieveResult | None = None
    reply: Reply | None = None
    failed: list[str] = []
    """Parts that failed without failing the turn (retrieval: the reply is made without passages)."""
    timings_ms: dict[str, float] = {}
    recorded: Lineage | None = None
    """The reply's lineage as the step wrote it to the transcript (`RespondHereRequest.record`); None: not
    written, and the workflow records the turn."""


class ComposedReply(BaseModel):
    """What the local `compose` step made of a turn."""

    reply: Reply | None = None
    """None: the reply needs a model elsewhere (an LLM), which the retried `generate` activity calls."""


class DocumentRef(BaseModel):
    document_id: str
    version: int | None = None
    chunk_id: str | None = None
    score: float | None = None
    """The retrieval score the passage had when it was used."""


class Lineage(BaseModel):
    """Where an answer came from: the models, the prompt and the document versions it stands on."""

    nlu_model: str | None = None
    generator: str
    prompt_id: str | None = None
    prompt_hash: str | None = None
    documents: list[DocumentRef] = []
    timings_ms: dict[str, float] = {}
    """Time of each step up to the reply."""
    degraded_reason: str | None = None
    flags: dict[str, bool] = {}
    """The conversation's feature flags for this turn (empty before flags existed)."""
    context: ContextLineage | None = None
    """For an LLM answer: the turns it saw, the summary version, token counts, the retrieval query."""
    retrieval_query: str | None = None
    """What retrieval searched with, when the message was a follow-up made standalone."""
    agent: list[AgentStepRecord] | None = None
    """For an agent's answer: each model step that asked for tools, with its calls and their outcomes."""
    agent_answer: ModelCall | None = None
    """For an agent's answer: the model call that wrote it."""
    action: str | None = None
    """What the bot did (the policy's decision: `answer`, `flow_prompt`, `agent`, …); None before it was kept."""
    data: dict[str, Any] | None = None
    """For a structured reply: the object the model returned."""
    bot: str | None = None
    """The bot that answered; None before bots were versioned."""
    bot_version: str | None = None
    """Its version (`dialogue bot show BOT VERSION`: its files, its model card); None: the worker's own
    bot folder, before bots were versioned."""
    memory: list[MemoryUse] = []
    """The items of the end user's memory the answer used."""

    @classmethod
    def of_reply(
        cls,
        reply: Reply,
        nlu: NluResult,
        *,
        timings_ms: dict[str, float],
        degraded_reason: str | None,
        flags: dict[str, bool],
        query: str | None,
        action: str | None,
        bot: str | None,
        bot_version: str | None,
        agent: list[AgentStepRecord] | None = None,
        agent_answer: ModelCall | None = None,
    ) -> Lineage:
        """The lineage of `reply`: made in the workflow (`Answer.trace`), or by `respond_here` when it
        writes the turn itself; one way, so both write the same."""
        return cls(
            nlu_model=nlu.model,
            generator=reply.generator,
            prompt_id=reply.prompt_id,
            prompt_hash=reply.prompt_hash,
            documents=[
                DocumentRef(
                    document_id=s.document_id, version=s.document_version, chunk_id=s.chunk_id, score=s.score
                )
                for s in reply.sources
            ],
            timings_ms=timings_ms,
            degraded_reason=degraded_reason,
            flags=dict(flags),
            context=reply.context.model_copy(update={"retrieval_query": query}) if reply.context else None,
            data=reply.data,
            retrieval_query=query,
            agent=agent,
            agent_answer=agent_answer,
            action=action,
            bot=bot,
            bot_version=bot_version,
            memory=list(reply.memory),
        )


class TurnReply(BaseModel):
    """The answer to one turn."""

    conversation_id: str
    turn_id: str
    turn_index: int
    reply: Reply
    nlu: NluResult
    degraded: bool = False
    degraded_reason: str | None = None
    """Which step failed when `degraded` is true: the user got a fallback reply."""
    timings_ms: dict[str, float] = {}
    """Time of each step, as the workflow saw it (scheduling included), and the whole turn."""
    lineage: Lineage | None = None
    interrupted: bool = False
    """A newer turn interrupted this one (`interrupt` policy): it has no reply text."""
    held_by: Holder = "bot"
    """`agent`: the conversation is handed off; a person answers through agent messages, not this reply."""
    user_text: str = ""
    approvals: list[PendingApproval] = []
    """Tool calls of this turn's agent that wait for approval: the reply says so, and the agent goes on
    once they are decided (`POST …/approvals/{call_id}`)."""
    resumes: str | None = None
    """For the answer of an agent that waited for approvals: the turn that asked for them."""


class ParkedAgent(BaseModel):
    """A turn's agent waiting for approvals: where it stands, to go on from there once they are decided."""

    turn_id: str
    turn_index: int
    text: str
    nlu: NluResult | None = None
    passages: list[Passage] = []
    query: str | None = None
    """What the turn's retrieval searched with, for the lineage of the agent's answer when it goes on."""
    flags: dict[str, bool] = {}
    streamed: bool = False
    steps: list[AgentStepRecord] = []
    """The steps before the one that waits."""
    waiting: AgentStepRecord
    """The step whose calls wait: its outcomes so far are those of the calls that needed no approval."""
    pending: list[PendingApproval] = []
    decisions: dict[str, ApprovalDecision] = {}
    resumed: int = 0
    """How many times this turn's agent went on after approvals (each answer its own transcript entry)."""


class ApprovalReply(BaseModel):
    """What deciding an approval did: the calls of that turn still pending, or the agent's answer once
    none is (the turn's agent went on)."""

    conversation_id: str
    call_id: str
    approved: bool
    pending: list[PendingApproval] = []
    reply: TurnReply | None = None


class ConversationState(BaseModel):
    """The live state of a conversation, as the workflow's `state` query returns it."""

    conversation_id: str
    status: ConversationStatus = "active"
    turn_count: int = 0
    slots: dict[str, Any] = {}
    active_flow: str | None = None
    requested_slot: str | None = None
    handoff: bool = False
    """True while a person holds the conversation."""
    held_by: Holder = "bot"
    agent: str | None = None
    """The person holding the conversation, when known."""
    last_intent: str | None = None
    degraded_count: int = 0
    """Turns answered with a fallback (a step failed or the deadline passed)."""
    started_at: datetime
    updated_at: datetime
    ended_reason: str | None = None
    intent_counts: dict[str, int] = {}
    """How often each intent came up: the running summary that survives continue-as-new."""
    run: int = 1
    """Which run of the workflow holds the conversation now (continue-as-new starts the next)."""
    unrecorded: int = 0
    """Messages the store could not take yet (it was unavailable): retried until it does, in order."""
    rolling_summary: RollingSummary | None = None
    """The older turns folded into a summary for LLM calls, once they no longer fit the context budget."""
    summary_failed: bool = False
    """The last fold failed after its retries: LLM calls leave the older turns out, and say so."""
    last_query: str | None = None
    """What the last turn's retrieval searched with: the next follow-up is made standalone from it."""
    last_action: str | None = None
    """What the bot did in the last turn: a follow-up continues an `answer`."""
    memory_offer: MemoryOffer | None = None
    """The last reply asked the end user whether it may remember these facts (`memory.ask`)."""
    pending_approvals: list[PendingApproval] = []
    """Tool calls waiting for approval, oldest first."""
    reminders: list[Reminder] = []
    """Messages scheduled to be sent later, soonest first (`remind`); each leaves the list when sent or
    cancelled."""
    user: str | None = None
    """The end user the conversation belongs to (None: the integrator's server speaks for its tenant)."""
    trusted_slots: list[str] = []
    """Slots the integrator's server set at the start: what the user types never overwrites them."""
    bot: str | None = None
    """The bot that answers the conversation; None: the worker's own bot."""
    bot_version: str | None = None
    """The version of `bot` it is pinned to; None: the worker's own bot folder."""
    workflow_status: str | None = None
    """When `status` is `failed`: how the workflow closed (`failed`, `terminated`, `timed_out`, `canceled`)."""

    @computed_field  # type: ignore[prop-decorator]
    @property
    def summary(self) -> str:
        top = sorted(self.intent_counts.items(), key=lambda item: (-item[1], item[0]))[:5]
        topics = ", ".join(f"{name} x{count}" for name, count in top) or "nothing yet"
        return f"{self.turn_count} turns; topics: {topics}"


class CarriedState(BaseModel):
    """The compact state a run hands to the next at continue-as-new: not the history, only what matters."""

    state: ConversationState
    recent_turns: list[TurnReply] = []
    """The last few replies: a retried turn whose run has ended still gets its reply, not a second turn."""
    parked: list[ParkedAgent] = []
    """Agents waiting for approvals: they wait on in the next run."""


class RecordTurnRequest(BaseModel):
    """One turn for the SQL store's transcript and conversation index."""

    conversation_id: str
    turn_id: str
    turn_index: int
    user_text: str
    reply: Reply | None
    """None when the bot did not answer: interrupted, or a person holds the conversation."""
    nlu: NluResult
    degraded: bool = False
    at: datetime
    lineage: Lineage | None = None
    resumes: str | None = None
    """For what an agent said when it went on after approvals (no user message): the turn it continues."""
    provisional: bool = False
    """Written by `respond_here` before the workflow has the reply: its reply never overwrites one written for
    the same turn (a deadline's fallback may land first)."""
    user: str | None = None
    """The conversation's end user: what they say of themself is remembered for them, if they consented."""


class RecordMessageRequest(BaseModel):
    """A transcript entry outside the bot's turns: an agent's message, a handoff or a handback."""

    conversation_id: str
    turn_id: str
    turn_index: int
    role: Literal["agent", "system", "bot"]
    text: str
    author: str | None = None
    at: datetime
    event: Literal["agent_message", "handoff", "handback", "bot_message"]
    """The event-log kind a stream client receives: `agent_message`, `handoff`, `handback`, or `bot_message` (a reminder the bot sends)."""


class RecordConversationRequest(BaseModel):
    """A change of a conversation's status for the SQL store's index."""

    conversation_id: str
    status: ConversationStatus
    turn_count: int = 0
    at: datetime
    ended_reason: str | None = None
    user: str | None = None
    """The conversation's end user, kept in the index: a user's conversations are found by it."""


class Recorded(BaseModel):
    """What a record activity wrote: readable in history, unlike an empty result."""

    conversation_id: str
    turn_index: int | None = None
    messages: int = 0
    status: ConversationStatus | None = None


class RetentionReport(BaseModel):
    erased: int
    failed: int = 0
    retention_days: float | None
    cutoff: datetime | None = None
    memory_forgotten: int = 0
    """Items of end users' memory forgotten because their retention ran out."""


ConversationInput.model_rebuild()
AgentStep.model_rebuild()
