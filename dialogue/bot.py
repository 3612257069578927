"""The bot definition: intents, their examples and responses, entity patterns and the knowledge base.

A bot is a YAML file; its knowledge base is a folder of Markdown documents beside it
(the first `# ` line is the title, blank lines separate passages).
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, Field, field_validator


class Intent(BaseModel):
    name: str
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


class KnowledgeDocument(BaseModel):
    id: str
    title: str
    text: str
    url: str | None = None


class BotDefinition(BaseModel):
    name: str
    description: str = ""
    intents: list[Intent] = []
    entities: list[EntityPattern] = []
    fallback_responses: list[str] = Field(default_factory=lambda: ["Sorry, I did not get that."])
    answer_template: str = "{answer}"
    """How a knowledge-base answer is worded when the intent has no template of its own."""
    min_answer_score: float = 0.5
    """Below this BM25 score a passage is not trusted to answer."""
    knowledge_dir: str | None = "knowledge"
    """Folder of Markdown documents, relative to the bot file."""
    documents: list[KnowledgeDocument] = []

    def intent(self, name: str) -> Intent | None:
        return next((intent for intent in self.intents if intent.name == name), None)


def _read_document(path: Path) -> KnowledgeDocument:
    text = path.read_text(encoding="utf-8").strip()
    first, _, rest = text.partition("\n")
    if first.startswith("# "):
        title, body = first[2:].strip(), rest.strip()
    else:
        title, body = path.stem.replace("-", " ").capitalize(), text
    return KnowledgeDocument(id=path.stem, title=title, text=body)


def load_bot(path: Path) -> BotDefinition:
    """Read a bot definition and its knowledge documents."""
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    bot = BotDefinition.model_validate(raw)
    if bot.knowledge_dir:
        folder = path.parent / bot.knowledge_dir
        bot.documents += [_read_document(doc) for doc in sorted(folder.glob("*.md"))]
    return bot


@lru_cache
def load_bot_cached(path: Path) -> BotDefinition:
    return load_bot(path)
