"""What makes an answer stand on its own, written down so that the generator follows it and the evaluation
measures it (`dialogue kb evaluate --end-to-end`):

1. **The expected fact is there**: the answer contains one of the facts the question set gives for the
   question (a price, a duration, a condition, the name of a setting).
2. **No dangling reference**: no sentence leans on one the answer does not include: it opens with a pronoun
   or a connective whose antecedent is elsewhere ("It takes effect immediately", "Below that, …",
   "However, …"), or names something by a demonstrative ("these countries", "this address").
3. **Short**: at most `MAX_WORDS` words, what a chat reply can be read in at a glance.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

MAX_WORDS = 80

_OPENING = re.compile(
    r"""^\W*(?:
        (?:it|its|it's|they|them|their|theirs|this|that|these|those|such|he|she|his|her)\b
      | (?:below|above|after|before|besides|beyond|instead\ of|apart\ from|except\ for)\ (?:that|this|these|those|it)\b
      | (?:in\ (?:that|this|which|such\ a)\ case|if\ so|if\ not|otherwise|however|therefore|thus|also|too|then
         |in\ addition|moreover|furthermore|as\ well|even\ so|still|so\ too|likewise|similarly)\b
      | the\ same\b
      | (?:here|there)\ (?:too|as\ well)\b
      | (?:here|there)\s*,
    )""",
    re.IGNORECASE | re.VERBOSE,
)
"""A sentence that opens by pointing back at something said before it."""

_DEMONSTRATIVE = re.compile(
    r"\b(?:these|those|such)\s+(?!as\b)[a-z]+|\bthis\s+(?!is\b|means\b|way\b)[a-z]+",
    re.IGNORECASE,
)
"""A sentence that names something by pointing at it ("these countries", "this address"). "The same …" is
left to the opening: inside a sentence it is mostly a comparison it makes itself ("the same product")."""


def dangling_reference(sentence: str) -> str | None:
    """The words by which `sentence` leans on one before it, or None when it stands alone."""
    opening = _OPENING.match(sentence)
    if opening is not None:
        return opening.group(0).strip(" \t,")
    pointing = _DEMONSTRATIVE.search(sentence)
    return pointing.group(0) if pointing is not None else None


@dataclass(frozen=True)
class Marks:
    """An answer against the rubric."""

    fact: bool | None
    """The expected fact is in it (None: the question gives none)."""
    dangling: str | None
    """The first dangling reference found (None: the answer stands on its own)."""
    words: int

    @property
    def short(self) -> bool:
        return self.words <= MAX_WORDS


def mark(sentences: list[str], facts: list[str], follows: Callable[[str, str], bool]) -> Marks:
    """An answer, as its `sentences`, against the rubric. A sentence that leans on another is resolved when
    the sentence before it in the answer is the one it follows in its article (`follows(before, after)`)."""
    answer = " ".join(sentences)
    folded = " ".join(answer.lower().split())
    fact = any(" ".join(f.lower().split()) in folded for f in facts) if facts else None
    dangling = None
    for position, sentence in enumerate(sentences):
        reference = dangling_reference(sentence)
        if reference is not None and not (position > 0 and follows(sentences[position - 1], sentence)):
            dangling = reference
            break
    return Marks(fact=fact, dangling=dangling, words=len(answer.split()))
