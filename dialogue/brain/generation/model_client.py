"""The model a conversation's generator talks to, as the steps around an answer use it.

The agent's steps, the rolling summary, the query rewrite and the rebuilding of an answer's request from a
history each need a model to hold a conversation with, not a particular generator: they ask the turn's
generator for its `model_client` (None when it has no model: the grounded generator) and use only this
interface. The `openai` generator (dialogue/brain/generation/openai_chat.py) is the one implementation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from dialogue.brain.generation.prompts import Prompt
from dialogue.brain.llm.context import ChatMessage, Context, Conversation
from dialogue.model.contracts import Passage


@dataclass(frozen=True)
class RequestedCall:
    """A tool call the model asked for, as it streamed it: its id, the tool's name, the arguments' JSON."""

    id: str
    name: str
    arguments: str


@dataclass
class Completion:
    text: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cut: bool = False
    """The model wrote past `max_tokens` (an endpoint that does not stop it): its text was cut there."""
    notes: list[str] = field(default_factory=list)
    tool_calls: list[RequestedCall] = field(default_factory=list)


class ModelClient(Protocol):
    """A model to hold a conversation with, configured by the bot's `llm` settings (or its variant's)."""

    name: str
    """`openai:<model>`: recorded as the generator of what the model wrote, in replies and summaries."""

    @property
    def summary_prompt(self) -> Prompt:
        """The prompt that folds older turns into the rolling summary (`llm.summary_prompt`)."""
        ...

    @property
    def rewrite_prompt(self) -> Prompt:
        """The prompt that makes a follow-up standalone for retrieval (`llm.rewrite_prompt`)."""
        ...

    def assemble(
        self, *, system: str, current: str, conversation: Conversation, redact: Callable[[str], str]
    ) -> Context:
        """The messages of a call: `system`, what was said before within the bot's context budget (counted
        with this model's tokenizer), then `current`; `redact` applied to the conversation's words. No I/O."""
        ...

    def prepare(
        self,
        question: str,
        passages: list[Passage],
        *,
        conversation: Conversation | None = None,
        redact: bool = True,
        prompt: Prompt | None = None,
    ) -> tuple[list[Passage], Context] | None:
        """The passages an answer may use and the messages it sends the model; None when no passage is
        trusted. No I/O: the same inputs, from a history, give the same messages (`dialogue.brain.llm.rebuild`,
        with the `prompt` the answer recorded)."""
        ...

    async def chat(
        self,
        messages: list[ChatMessage],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        tools: list[dict[str, Any]] | None = None,
        on_token: Callable[[str], None] | None = None,
    ) -> Completion:
        """The model's reply to `messages`, streamed to `on_token`; with `tools` (OpenAI's function tools) it
        may ask for calls instead. `max_tokens` and `temperature` are the bot's `llm` settings unless given.
        Errors are `ApplicationError`s that say whether retrying can help."""
        ...
