"""Follow-up questions: telling an elliptical message ("and to Austria?") and making it standalone for
retrieval, without a model.

A message is a follow-up when it starts with a connective ("and …", "what about …", "how about …",
"also …", "what if …"), or is short (at most six words) and refers back ("it", "that", "those",
"there", …), or is a bare phrase of at most four words opening with a preposition or an article
("to Austria?", "for laptops?", "the Netherlands?"). A greeting or a thanks is none of these.
Its standalone query is the message with the content words of the previous user message that it does
not repeat, in brackets: "and to Austria? (express shipping cost)". Both retrieval rankings take it:
BM25 finds the carried terms, the embedding carries the topic. With an LLM, the model may rewrite the
question instead (the `rewrite_query` activity, prompt `standalone_query@vN`).
"""

from __future__ import annotations

import re

from dialogue.brain.text import terms

CONNECTIVES = (
    "and ",
    "what about",
    "how about",
    "also ",
    "or ",
    "but ",
    "same for",
    "what if",
    "then ",
)
REFERRING = frozenset("it its that this those these they them there one ones same".split())
PHRASE_OPENERS = frozenset("to for in on with from at about by into the a an my your".split())
_WORDS = re.compile(r"[a-z']+")


def is_follow_up(text: str) -> bool:
    """Whether `text` leans on what was said before (see the module's rules)."""
    lowered = text.lower().strip()
    words = _WORDS.findall(lowered)
    if not words:
        return False
    if lowered.startswith(CONNECTIVES):
        return True
    if len(words) <= 6 and REFERRING.intersection(words):
        return True
    return len(words) <= 4 and words[0] in PHRASE_OPENERS


def standalone_query(text: str, previous: str | None) -> str:
    """The question retrieval should search with: `text` itself, unless it is a follow-up of `previous`."""
    if not previous or not is_follow_up(text):
        return text
    said = set(terms(text))
    carried = list(dict.fromkeys(t for t in terms(previous) if t not in said))
    return f"{text.strip()} ({' '.join(carried)})" if carried else text
