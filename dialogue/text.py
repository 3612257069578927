"""Text normalisation shared by NLU and retrieval, so that both see the same words."""

from __future__ import annotations

import re

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")

# Words too common to tell documents or intents apart.
STOPWORDS = frozenset(
    "a an and are as at be but by can do does for from have how i if in is it its me my of on or our so "
    "that the their there this to was we what when where which who why will with you your".split()
)


def words(text: str) -> list[str]:
    """Lower-cased, singular words of `text`, stopwords kept (keyword phrases may need them)."""
    return [_singular(word) for word in _WORD.findall(text.lower())]


def terms(text: str) -> list[str]:
    """Lower-cased, singular words of `text` without stopwords: what retrieval indexes."""
    return [_singular(word) for word in _WORD.findall(text.lower()) if word not in STOPWORDS]


def _singular(word: str) -> str:
    # Enough folding that "returns" finds "return" and "refunds" finds "refund"; same on both sides.
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word
