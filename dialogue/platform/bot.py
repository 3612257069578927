"""The bot definition: intents, their keywords, actions and responses, entity patterns and
lookups, where its NLU data, knowledge documents and Python tools are. A bot is a YAML file; paths in it
are relative to that file."""

from __future__ import annotations

import hashlib
import importlib.util
import re
import sys
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, field_validator, model_validator

from dialogue.platform.flags import FlagSettings
from dialogue.platform.tool_config import McpServer, ToolSpec


class AgentSettings(BaseModel):
    """The agent: an LLM that answers a turn by calling the bot's tools until it can reply."""

    tools: list[ToolSpec] = []
    max_steps: int = Field(default=6, ge=1, le=50)
    """Model calls in one turn at most; at the limit the model answers with what it has (degraded)."""
    max_tool_calls: int = Field(default=20, ge=1, le=200)
    """Tool calls in one turn at most."""
    prompt: str = "agent@v2"
    max_result_chars: int = Field(default=4000, ge=100)
    """Of a tool's result, the model sees this much (cut with a marker)."""
    approval_timeout_seconds: float = Field(default=900, gt=0)
    """A call waiting for approval this long is denied, and the agent goes on without it."""
    mcp_servers: list[McpServer] = []
    intents: list[str] = []
    """In agent mode, the intents the agent handles however sure the NLU is (their scripts stay for the
    scripted mode)."""
    confidence: float = Field(default=0.8, ge=0, le=1)
    """In agent mode, a scripted intent is answered by its script only when the NLU is at least this sure;
    every other turn (unsure, out of scope, a follow-up) goes to the agent."""
    memory: bool = False
    """Offer the model the built-in `remember` and `forget` tools, which keep and drop items of the end
    user's memory (only while they consent), beside the bot's own tools."""

    @property
    def all_tools(self) -> list[ToolSpec]:
        """The bot's own tools, then the built-in memory tools when `memory` is on (a name the bot's own
        tools have already is the bot's)."""
        own = {tool.name for tool in self.tools}
        built_in = [tool for tool in MEMORY_TOOLS if tool.name not in own] if self.memory else []
        return [*self.tools, *built_in]

    def tool(self, name: str) -> ToolSpec | None:
        return next((tool for tool in self.all_tools if tool.name == name), None)


MEMORY_TOOLS = (
    ToolSpec(
        name="remember",
        kind="memory",
        description=(
            "Remember something the customer told you about themself, for their later conversations: their "
            "name, delivery city, preferred language, the order they asked about, or a preference. Kept only "
            "if they agreed to be remembered; the result says whether it was."
        ),
        parameters={
            "type": "object",
            "properties": {
                "kind": {
                    "type": "string",
                    "pattern": "^[a-z][a-z0-9_]{0,63}$",
                    "description": "What it is: name, city, language, order, or a short snake_case name.",
                },
                "value": {"type": "string", "minLength": 1, "maxLength": 500},
            },
            "required": ["kind", "value"],
            "additionalProperties": False,
        },
    ),
    ToolSpec(
        name="forget",
        kind="memory",
        description="Forget what is remembered of the customer: one kind of it, or everything without a kind.",
        parameters={
            "type": "object",
            "properties": {"kind": {"type": "string", "pattern": "^[a-z][a-z0-9_]{0,63}$"}},
            "additionalProperties": False,
        },
    ),
)
"""The built-in tools of `agent.memory`: they act for the conversation's verified end user alone."""


class MemorySettings(BaseModel):
    """How the bot keeps the end user's memory (with their consent; `dialogue/brain/memory.py`)."""

    ask: bool = False
    """When a signed-in user who was never asked says something worth remembering ("my name is Anna"),
    the reply asks whether it may be remembered; their "yes" or "no" is their consent."""
    model_notes: bool = True
    """With a model configured (`llm`): after each turn the model answered, the model reads the turn for
    facts to keep too, off the reply's path (`note_memory`), for users who consent. The rules read every
    turn in any case."""


class Intent(BaseModel):
    name: str
    title: str | None = None
    """How the bot names the intent to the user, e.g. in a clarifying question ("track an order")."""
    keywords: list[str] = []
    """Words or phrases that, found in the text, point to this intent."""
    responses: list[str] = []
    """Reply templates; `{answer}` stands for the best knowledge-base passage, `{memory.name}` for an item
    of the end user's memory (a template naming one is used only when it is remembered, so keep one that
    names none)."""
    action: Literal["respond", "answer", "flow", "handoff", "end", "agent"] = "respond"
    """`respond` replies from the templates; `answer` grounds the reply in the knowledge base; `flow` starts
    the named flow; `handoff` hands the conversation to a person; `end` replies and ends the conversation;
    `agent` lets the LLM answer, calling the bot's tools (`agent:`)."""
    flow: str | None = None
    """The flow an intent with action `flow` starts."""

    @model_validator(mode="after")
    def _one_template_without_memory(self) -> Intent:
        if self.responses and all("{memory." in response for response in self.responses):
            raise ValueError(f"intent {self.name!r}: keep one response that names no {{memory.…}} item")
        return self


class Privacy(BaseModel):
    """What the bot keeps of what people tell it."""

    redact: Literal["storage", "llm", "off"] = "storage"
    """`storage`: personal data is replaced (`[EMAIL]`, `[PHONE]`, `[CARD]`, `[IBAN]`, …) before a turn
    enters Temporal, the store or an LLM; `llm`: only before text is sent to an external LLM; `off`."""
    patterns: dict[str, str] = {}
    """More to redact: label → regular expression (e.g. `CUSTOMER_ID: "\\bC-\\d{6}\\b"`)."""
    retention_days: float | None = None
    """Conversations not updated for this long are erased by the retention schedule; kept when unset."""

    @field_validator("patterns")
    @classmethod
    def _compile(cls, value: dict[str, str]) -> dict[str, str]:
        for pattern in value.values():
            re.compile(pattern)
        return value


class EntityPattern(BaseModel):
    name: str
    pattern: str

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        re.compile(value)
        return value


class SlotSpec(BaseModel):
    name: str
    entity: str | None = None
    """The entity that fills the slot; the slot's name when unset."""
    prompt: str
    """What the bot asks when the slot is missing."""
    pattern: str | None = None
    """A value must match this (full match) to be accepted."""
    invalid: str | None = None
    """What the bot says when a value does not match."""
    remembered: str | None = None
    """A kind of the end user's memory (`order`: the order they last asked about) that fills the slot when
    they do not give it; the reply says so (`BotDefinition.remembered_template`)."""

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            re.compile(value)
        return value


class Flow(BaseModel):
    """Multi-turn slot filling that ends in a tool call."""

    name: str
    title: str
    """How the bot names it when reminding the user ("checking your order")."""
    slots: list[SlotSpec]
    tool: str
    """The tool called with the slots once all are filled: a function of the bot's `python_tools` file
    (`dialogue.brain.python_tools`)."""
    done: str
    """Reply template once the tool answered; `{slot}` and `{field}` of the tool's data are filled in."""
    failed: str = "Sorry, I couldn't complete that."
    """Reply template when the tool could not find what the slots describe."""
    cancelled: str = "Alright, I've stopped that."
    answer_first: bool = False
    """When the flow starts, first say what the knowledge base answers to the message, if it does, then ask
    the flow's question: "When do I get the tracking number?" learns when, and can still have the order
    looked up."""


class NluGates(BaseModel):
    """What a trained model's card must show before a bot version with it is published
    (`dialogue.brain.nlu.model_card.failed_gates`). A measurement the card lacks fails its gate."""

    min_accuracy: float = Field(default=0.8, ge=0, le=1)
    """On the held-out examples (`test`, else a split of the training data), `out_of_scope` counted as an
    intent. The demo's model makes 0.96 with embeddings and 0.83 without."""
    min_macro_f1: float = Field(default=0.0, ge=0, le=1)
    min_out_of_scope_recall: float = Field(default=0.7, ge=0, le=1)
    """Of the held-out `out_of_scope` examples, the share declined; not checked when there are none."""
    max_changed_intents: float = Field(default=0.1, ge=0, le=1)
    """Of the recorded turns replayed against the stable version, the share whose intent changed. A model
    retrained on reviewed turns is meant to change a few: the ones it was taught."""
    max_failed_tests: int = Field(default=0, ge=0)
    """Conversation tests (`dialogue test`) that may fail."""


class NluData(BaseModel):
    """Where the bot's NLU training data is, relative to the bot file."""

    train: str
    validation: str | None = None
    test: str | None = None
    reviewed: list[str] = []
    """Annotation files from `dialogue nlu review` (one file, or a list): their labelled lines are training
    examples too, each traced to the conversation and turn it came from; a line labelled `skip` or not
    at all is left out, and a label that is no intent of the bot stops training, naming the line."""
    gates: NluGates = NluGates()

    @field_validator("reviewed", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value


class LlmOverrides(BaseModel):
    """Model settings that a rollout may change: the bot's `llm.variant`, on for the conversations the
    `llm_variant` flag puts on it (e.g. a new prompt for 10 % of them)."""

    model: str | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, ge=1)
    context_tokens: int | None = Field(default=None, ge=32)
    prompt: str | None = None


class LlmSettings(BaseModel):
    """How the bot's LLM calls are made (when the LLM generator answers): each recorded in lineage."""

    model: str | None = None
    """The model name at the endpoint; `DIALOGUE_LLM_MODEL` when unset."""
    temperature: float = Field(default=0.2, ge=0, le=2)
    max_tokens: int = Field(default=400, ge=1)
    """A reply's length at most; a model that writes on is cut there."""
    context_tokens: int = Field(default=3000, ge=32)
    """The conversation's share of a call: the summary, the recent turns verbatim and the current message
    (the instructions and the passages come on top). Counted with the model's own tokenizer when it is
    an OpenAI model, else estimated (dialogue/brain/llm/tokenizer.py)."""
    prompt: str = "grounded_answer@v3"
    """The answering prompt, `name@vN`: dialogue/brain/generation/prompts/<name>.vN.txt."""
    summarizer: Literal["llm", "extractive"] = "llm"
    """How older turns are folded into the rolling summary: by the model (`summary_prompt`), or by keeping
    the first sentence of each message (no model call)."""
    summary_prompt: str = "summarize@v1"
    """The prompt that folds older turns into the rolling summary."""
    rewrite_prompt: str = "standalone_query@v1"
    """The prompt that makes a follow-up question standalone for retrieval."""
    rewrite_queries: bool = True
    """Let the LLM make a follow-up standalone before retrieval; off, or without an LLM, a heuristic does."""
    response_format: dict[str, Any] | None = None
    """A JSON schema for structured replies: asked of the model (`response_format` json_schema, or in the
    instructions where the endpoint has no such option), validated, in the reply's `data`."""
    reply_field: str = "answer"
    """The field of a structured reply that is said to the user."""
    variant: LlmOverrides | None = None

    def with_variant(self) -> LlmSettings:
        """These settings with the variant's overrides (the `llm_variant` flag's side)."""
        if self.variant is None:
            return self
        return self.model_copy(update=self.variant.model_dump(exclude_none=True))


class BotDefinition(BaseModel):
    name: str
    description: str = ""
    intents: list[Intent] = []
    entities: list[EntityPattern] = []
    flows: list[Flow] = []
    tables: dict[str, str] = {}
    """Data files the tools read, by name (relative to the bot file): the demo's `orders` table."""
    python_tools: str | None = None
    """The bot's own Python file (relative to the bot file), e.g. `shop.py`: it registers the functions its
    flows' tools and its agent's `python` tools call (`dialogue.brain.python_tools`). The worker loads it at its
    start; other processes never run it."""
    lookups: dict[str, list[str]] = {}
    """Entity lookup tables: entity name to its values, matched as whole words."""
    nlu: NluData | None = None
    fallback_responses: list[str] = Field(default_factory=lambda: ["Sorry, I can't help with that."])
    """Replies to out-of-scope text."""
    no_answer_responses: list[str] = Field(
        default_factory=lambda: ["I couldn't find an answer to that in our help articles."]
    )
    """Replies when the knowledge base holds no answer."""
    clarify_template: str = "Sorry, I'm not sure I understood. Do you want to {first} or {second}?"
    resume_template: str = "To get back to {flow}: {prompt}"
    """Added to a reply on another topic while a flow waits for an answer."""
    remembered_template: str = "Using {value} from our last conversation. "
    """Before a flow's reply whose slot the user's memory filled: `{value}` is the value used."""
    clarify_below: float = 0.0
    """Below this intent confidence the bot asks which of the two likeliest intents was meant."""
    answer_template: str = "{answer}"
    """How a knowledge-base answer is worded when the intent has no template of its own."""
    min_answer_score: float = 1.0
    """BM25 score a passage needs to be trusted to answer (when there are no embeddings)."""
    min_semantic_score: float = 0.35
    """Cosine similarity a passage needs to be trusted to answer (with embeddings)."""
    privacy: Privacy = Privacy()
    memory: MemorySettings = MemorySettings()
    llm: LlmSettings = LlmSettings()
    agent: AgentSettings = AgentSettings()
    mode: Literal["scripted", "agent"] = "scripted"
    """`agent`: the LLM handles every turn that no scripted intent is sure of, with the bot's tools
    (`agent:`). Only where the `agent` flag is on; elsewhere, and with `scripted`, intents decide."""
    flags: FlagSettings = {}
    """Feature flags for this bot, overriding the deployment's (`DIALOGUE_FLAGS`): `streaming`,
    `llm_generator`, `redaction`, `handoff`, each `true`, `false` or a percentage of conversations."""
    knowledge_dir: str | None = "knowledge"
    """Folder of knowledge documents (Markdown, text, HTML) relative to the bot file; `dialogue up` ingests it."""

    path: Path | None = None
    """The file the definition was read from; relative paths in it start at its folder."""

    @model_validator(mode="after")
    def _agent_names(self) -> BotDefinition:
        """A typo in the agent's declarations stops the process at start-up, not a user's turn."""
        unknown = [name for name in self.agent.intents if self.intent(name) is None]
        if unknown:
            raise ValueError(f"agent.intents names no intent of this bot: {', '.join(unknown)}")
        names = [tool.name for tool in self.agent.tools]
        if len(set(names)) != len(names):
            raise ValueError("agent.tools: two tools have the same name")
        return self

    def intent(self, name: str) -> Intent | None:
        return next((intent for intent in self.intents if intent.name == name), None)

    def flow(self, name: str | None) -> Flow | None:
        return next((flow for flow in self.flows if flow.name == name), None)

    @property
    def entity_patterns(self) -> dict[str, str]:
        return {e.name: e.pattern for e in self.entities}

    def resolve(self, relative: str) -> Path:
        base = self.path.parent if self.path else Path.cwd()
        return base / relative


def load_bot(path: Path) -> BotDefinition:
    """Read a bot definition."""
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return BotDefinition.model_validate(raw | {"path": path})


@lru_cache
def load_bot_cached(path: Path) -> BotDefinition:
    return load_bot(path)


def load_bot_module(bot: BotDefinition) -> ModuleType | None:
    """The bot's `python_tools` file, imported from the bot's folder (None when it names none). Its module
    is named after the file's full path, and imported once per process: two bots' files of the same name
    stay apart, and neither shadows an installed module (the bot's folder never goes on `sys.path`)."""
    if bot.python_tools is None:
        return None
    path = bot.resolve(bot.python_tools).resolve()
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    name = f"dialogue_bot_{digest}_" + re.sub(r"\W", "_", path.stem)
    loaded = sys.modules.get(name)
    if loaded is not None:
        return loaded
    if not path.is_file():
        raise ValueError(f"python_tools: no file {path}")
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"python_tools: {path} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before it runs, as an import does: dataclasses look their module up
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
