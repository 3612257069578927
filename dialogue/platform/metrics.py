"""The Prometheus metrics of Dialogue Engine, in one place: what dashboards and alerts are written against.

The API exposes its registry at `/metrics`; the worker on its own port (`worker_metrics_port`), with the
Temporal SDK's worker metrics (`temporal_*`) beside its own.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# Buckets in seconds: a turn's floor is ~10 ms, its deadline 20 s.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0)

HTTP_REQUEST_SECONDS = Histogram(
    "dialogue_http_request_duration_seconds",
    "API requests by route template, method and status code.",
    ["method", "route", "status"],
    buckets=LATENCY_BUCKETS,
)
TURNS = Counter(
    "dialogue_turns",
    "Turns sent through the API by outcome: ok, degraded (fallback answer), rejected (4xx), failed (5xx).",
    ["outcome"],
)
TURN_SECONDS = Histogram(
    "dialogue_turn_duration_seconds",
    "A turn's round trip in the API, from request to reply, by outcome.",
    ["outcome"],
    buckets=LATENCY_BUCKETS,
)
STEP_SECONDS = Histogram(
    "dialogue_step_duration_seconds",
    "One activity of a turn in the worker (understand, retrieve, generate, record_turn, ...), by outcome.",
    ["step", "outcome"],
    buckets=LATENCY_BUCKETS,
)
BOT_VERSION_LOADS = Counter(
    "dialogue_bot_version_loads_total",
    "Published bot versions a worker loaded from the store (on a conversation's first use of them).",
    ["bot", "version"],
)
# Per bot and version (versions are few: the stable, a canary, the ones a rollback went back to).
BOT_TURNS = Counter(
    "dialogue_bot_turns",
    "Answered turns sent through the API, by bot, version and outcome: ok or degraded.",
    ["bot", "version", "outcome"],
)
BOT_TURN_KINDS = Counter(
    "dialogue_bot_turn_kinds",
    "Answered turns by bot, version and kind: fallback (the bot could not help), out_of_scope (the NLU "
    "placed the message outside the bot), handoff (handed to a person).",
    ["bot", "version", "kind"],
)
BOT_TURN_SECONDS = Histogram(
    "dialogue_bot_turn_duration_seconds",
    "An answered turn as the workflow timed it, by bot and version.",
    ["bot", "version"],
    buckets=LATENCY_BUCKETS,
)
BOT_RATINGS = Counter(
    "dialogue_bot_ratings",
    "Ratings of answers by bot, version and rating (up, down).",
    ["bot", "version", "rating"],
)
BOT_SATISFACTION = Histogram(
    "dialogue_bot_satisfaction",
    "Users' 1 to 5 scores of whole conversations, by bot and version.",
    ["bot", "version"],
    buckets=(1, 2, 3, 4, 5),
)
CANARY_ROLLBACKS = Counter(
    "dialogue_canary_rollbacks",
    "Canaries the canary guard dropped, by bot and reason (degraded, rated_down).",
    ["bot", "reason"],
)
READINESS_PROBES = Counter(
    "dialogue_readiness_probes",
    "Times `/readyz` asked Temporal, the store and the task queue; answers in between repeat the last probe's.",
)
TURNS_SHED = Counter(
    "dialogue_turns_shed",
    "Turns the API refused at once (503 overloaded) because it already waited on its limit of turns.",
)
TURNS_RESENT_EARLY = Counter(
    "dialogue_turns_resent_early",
    "Turns sent again to a conversation before the Retry-After its shed turn was given: held until then.",
)
TURNS_IN_FLIGHT = Gauge("dialogue_turns_in_flight", "Turns the API process waits on now.")
TURN_ADMISSION_LIMIT = Gauge(
    "dialogue_turn_admission_limit",
    "Turns in flight the API process admits now: what the stack answers within the queueing budget.",
)
EVENT_STREAMS = Gauge(
    "dialogue_event_streams", "Event streams (`GET …/events`) the API process holds open now."
)
EVENT_STREAMS_REFUSED = Counter(
    "dialogue_event_streams_refused",
    "Event streams the API refused (429 too_many_streams): the key or its tenant had its cap open.",
)
EVENT_FEEDS = Gauge(
    "dialogue_event_feeds",
    "Conversations whose event log the API process reads now for its open streams: one reader each, "
    "however many streams follow the conversation.",
)
LLM_TOKENS = Counter(
    "dialogue_llm_tokens",
    "Tokens the LLM provider reported, by kind (prompt, completion).",
    ["kind"],
)
LLM_ERRORS = Counter(
    "dialogue_llm_errors",
    "Failed LLM calls by reason (timeout, status code, connection).",
    ["reason"],
)
TOOL_CALLS = Counter(
    "dialogue_agent_tool_calls",
    "Attempts of the agent's tool calls, by tool and outcome: ok, failed (the tool's own error, which the "
    "model reads) or error (the attempt failed and Temporal retries it, up to the tool's attempts).",
    ["tool", "outcome"],
)
TOOL_SECONDS = Histogram(
    "dialogue_agent_tool_duration_seconds",
    "One attempt of an agent's tool call, by tool.",
    ["tool"],
    buckets=LATENCY_BUCKETS,
)
# Recorded by the workflow (replay-safe metric meter), among the worker's SDK metrics: decisions on tool
# calls that waited for approval, by tool and decision (approved, denied, timeout).
APPROVAL_DECISIONS = "dialogue_agent_approvals"
KNOWLEDGE_INDEX_REVISION = Gauge(
    "dialogue_knowledge_index_revision", "The knowledge revision the worker's search index serves."
)
KNOWLEDGE_INDEX_BUILT = Gauge(
    "dialogue_knowledge_index_built_timestamp_seconds",
    "When the worker's search index was built (Unix time): its age is now minus this.",
)
KNOWLEDGE_INDEX_BUILD_SECONDS = Gauge(
    "dialogue_knowledge_index_build_seconds", "How long the worker's last index build took."
)
BROKEN_CONVERSATIONS = Gauge(
    "dialogue_conversation_workflows_broken",
    "Conversations whose workflow failed, was terminated, timed out or was cancelled, and was not recovered "
    "since (`dialogue recover`), by how it closed; read from Temporal when /metrics is scraped.",
    ["status"],
)
# Recorded by the workflow through Temporal's replay-safe metric meter, so it appears among the
# worker's SDK metrics: how many turns were ahead of a new one in its conversation, by double-text policy.
TURN_QUEUE_DEPTH = "dialogue_turn_queue_depth"
