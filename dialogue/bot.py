"""The bot definition: intents, their keywords, actions and responses, entity patterns and
lookups, where its NLU data and knowledge documents are. A bot is a YAML file; paths in it
are relative to that file."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, Field, field_validator


class Intent(BaseModel):
    name: str
    title: str | None = None
    """How the bot names the intent to the user, e.g. in a clarifying question ("track an order")."""
    keywords: list[str] = []
    """Words or phrases that, found in the text, point to this intent."""
    responses: list[str] = []
    """Reply templates; `{answer}` stands for the best knowledge-base passage."""
    action: Literal["respond", "answer"] = "respond"
    """`respond` replies from the templates; `answer` grounds the reply in the knowledge base."""


class EntityPattern(BaseModel):
    name: str
    pattern: str

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        re.compile(value)
        return value


class NluData(BaseModel):
    """Where the bot's NLU training data is, relative to the bot file."""

    train: str
    validation: str | None = None
    test: str | None = None


class BotDefinition(BaseModel):
    name: str
    description: str = ""
    intents: list[Intent] = []
    entities: list[EntityPattern] = []
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
    clarify_below: float = 0.0
    """Below this intent confidence the bot asks which of the two likeliest intents was meant."""
    answer_template: str = "{answer}"
    """How a knowledge-base answer is worded when the intent has no template of its own."""
    min_answer_score: float = 1.0
    """BM25 score a passage needs to be trusted to answer (when there are no embeddings)."""
    min_semantic_score: float = 0.4
    """Cosine similarity a passage needs to be trusted to answer (with embeddings)."""
    knowledge_dir: str | None = "knowledge"
    """Folder of knowledge documents (Markdown, text, HTML) relative to the bot file; `dialogue up` ingests it."""

    path: Path | None = None
    """The file the definition was read from; relative paths in it start at its folder."""

    def intent(self, name: str) -> Intent | None:
        return next((intent for intent in self.intents if intent.name == name), None)

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
