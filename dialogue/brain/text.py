"""Text normalisation shared by NLU and retrieval, so that both see the same words."""

from __future__ import annotations

import re
from functools import lru_cache

import Stemmer

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


@lru_cache(maxsize=1)
def _stemmer() -> Stemmer.Stemmer:
    return Stemmer.Stemmer("english")


def stems(text: str) -> list[str]:
    """The Snowball (Porter 2) stems of `text`'s words without stopwords: what the lexical search indexes
    and searches with, on both sides alike ("refunded" and "refunds" find "refund", "shipping" "shipped").
    Measured beside the plain words (bench/quality.py): BM25 nDCG@10 +0.026 on SciFact, +0.005 on
    NFCorpus; the hybrid search +0.008 and +0.001."""
    return list(_stemmer().stemWords([w for w in _WORD.findall(text.lower()) if w not in STOPWORDS]))
