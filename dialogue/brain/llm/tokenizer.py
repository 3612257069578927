"""Counting tokens as the model will: exactly for OpenAI's models, by a documented estimate otherwise.

The exact count uses OpenAI's own byte-pair encodings (`o200k_base` for the GPT-4o family,
`cl100k_base` for GPT-4 and 3.5), shipped inside the `bpe-openai` package: nothing is downloaded
at run time, which `tiktoken` would do for its encoding files. Other models (Llama, Mistral, Qwen
behind vLLM, Ollama or llama.cpp) have tokenizers of their own; for them one token is counted per
four bytes of UTF-8, which is close for English text with those tokenizers and errs high on short
words. Every chat message adds MESSAGE_OVERHEAD tokens (its role and delimiters).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

log = logging.getLogger("dialogue.brain.llm")

ENCODINGS = (
    # Longest prefixes first; as tiktoken maps OpenAI's model names to their encodings.
    ("gpt-4o", "o200k_base"),
    ("gpt-4.1", "o200k_base"),
    ("gpt-4.5", "o200k_base"),
    ("gpt-5", "o200k_base"),
    ("chatgpt-4o", "o200k_base"),
    ("o1", "o200k_base"),
    ("o3", "o200k_base"),
    ("o4", "o200k_base"),
    ("gpt-4", "cl100k_base"),
    ("gpt-3.5", "cl100k_base"),
    ("gpt-35", "cl100k_base"),
)
MESSAGE_OVERHEAD = 4
BYTES_PER_TOKEN = 4
ESTIMATE = "estimate"


@dataclass(frozen=True)
class TokenCounter:
    name: str
    """The encoding (`o200k_base`, `cl100k_base`) or `estimate`: recorded in lineage."""
    _encoding: Any = None

    def count(self, text: str) -> int:
        if self._encoding is None:
            return math.ceil(len(text.encode()) / BYTES_PER_TOKEN)
        return len(self._encoding.encode_ordinary(text))

    def truncate(self, text: str, tokens: int) -> str:
        """The start of `text` that fits in `tokens`."""
        if self.count(text) <= tokens:
            return text
        if self._encoding is None:
            return text.encode()[: tokens * BYTES_PER_TOKEN].decode(errors="ignore")
        return str(self._encoding.decode(self._encoding.encode_ordinary(text)[:tokens]))

    def messages(self, messages: list[dict[str, str]]) -> int:
        return sum(self.count(m["content"]) + MESSAGE_OVERHEAD for m in messages)


@lru_cache
def counter_for(model: str) -> TokenCounter:
    """The counter for a model name as the endpoint knows it (`gpt-4o-mini`, `llama3.1:8b`, …)."""
    name = next((encoding for prefix, encoding in ENCODINGS if model.startswith(prefix)), None)
    if name is None:
        return TokenCounter(ESTIMATE)
    import bpe_openai  # loads its tables (about 1.5 s, once per process): only for OpenAI's models

    return TokenCounter(name, bpe_openai.get_encoding(name))
