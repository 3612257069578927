"""Entity extraction: the bot's patterns and lookup tables, values learned from annotated
training examples, and built-in patterns (e-mail, order id, date, phone number, number).

Where candidates overlap, the bot's own declarations win over learned values, learned
values over built-ins, and among equals the longer span wins: "NW-123456" is one
order id, not an order id and a number.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from dialogue.model.contracts import Entity

_MONTHS = "january|february|march|april|may|june|july|august|september|october|november|december"
_MONTHS_SHORT = "jan|feb|mar|apr|jun|jul|aug|sep|sept|oct|nov|dec"
_MONTH = rf"(?:{_MONTHS}|{_MONTHS_SHORT})\.?"

# Order matters: earlier built-ins win a tie in span length.
BUILTIN_PATTERNS: dict[str, str] = {
    "email": r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b",
    "order_id": r"\b[A-Z]{2,4}-\d{4,10}\b",
    "date": (
        r"\b(?:\d{4}-\d{1,2}-\d{1,2}|\d{1,2}[./]\d{1,2}[./]\d{2,4}"
        rf"|\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?{_MONTH}(?:\s+\d{{4}})?"
        rf"|{_MONTH}\s+\d{{1,2}}(?:st|nd|rd|th)?(?:,?\s+\d{{4}})?"
        r"|today|tomorrow|yesterday)\b"
    ),
    "phone": r"(?<![\w+])\+?\d(?:[\s().-]?\d){6,14}(?!\w)",
    "number": r"(?<![\w.,-])-?\d+(?:[.,]\d+)?(?![\w-])",
}

DECLARED, LEARNED, BUILTIN = 0, 1, 2


@dataclass(frozen=True)
class _Candidate:
    rank: int
    start: int
    end: int
    entity: str
    value: str


class EntityExtractor:
    def __init__(
        self,
        *,
        patterns: Mapping[str, str] | None = None,
        lookups: Mapping[str, Iterable[str]] | None = None,
        learned: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        self._patterns = [
            (DECLARED, name, re.compile(pattern)) for name, pattern in (patterns or {}).items()
        ] + [
            (BUILTIN, name, re.compile(pattern, re.IGNORECASE)) for name, pattern in BUILTIN_PATTERNS.items()
        ]
        self._lookups = [
            (rank, name, _lookup_pattern(values), {v.lower(): v for v in values})
            for rank, table in ((DECLARED, lookups or {}), (LEARNED, learned or {}))
            for name, values in ((n, list(v)) for n, v in table.items())
            if values
        ]

    def extract(self, text: str) -> list[Entity]:
        candidates = [
            _Candidate(rank, m.start(), m.end(), name, m.group(0))
            for rank, name, pattern in self._patterns
            for m in pattern.finditer(text)
        ]
        candidates += [
            _Candidate(rank, m.start(), m.end(), name, canonical.get(m.group(0).lower(), m.group(0)))
            for rank, name, pattern, canonical in self._lookups
            for m in pattern.finditer(text)
        ]
        chosen: list[_Candidate] = []
        for candidate in sorted(candidates, key=lambda c: (c.rank, c.start - c.end)):
            if all(candidate.end <= c.start or candidate.start >= c.end for c in chosen):
                chosen.append(candidate)
        return [
            Entity(entity=c.entity, value=c.value, start=c.start, end=c.end)
            for c in sorted(chosen, key=lambda c: c.start)
        ]


def _lookup_pattern(values: list[str]) -> re.Pattern[str]:
    # Longest first, so "wireless headphones" is preferred to "headphones".
    alternatives = "|".join(re.escape(v) for v in sorted(values, key=len, reverse=True))
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)
