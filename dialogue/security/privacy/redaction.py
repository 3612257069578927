"""PII redaction: e-mail addresses, phone numbers, payment card numbers and IBANs in a user message
replaced by placeholders ("[EMAIL]", "[PHONE]", "[CARD]", "[IBAN]"), so that the text can be logged,
stored or sent to a language model without them.

Detection is by regular expression, checked where a checksum exists: a card number must pass the
Luhn check and an IBAN the ISO 13616 mod-97 check, which keeps order numbers, article numbers
and mistyped strings out. Phone numbers have no checksum; their rules are about shape (prefix,
grouping, digit count) and about what they are not (dates, prices, times, versions, addresses).

Where findings overlap, the longer one wins, then the earlier one, then the detector listed first:
cards and IBANs come before phone numbers, so a card number is never reported as a phone number.
A string shaped like an IBAN that fails its check is not reported, but keeps shorter findings off
its span: the account number of a mistyped IBAN is not a phone number.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Finding:
    """Where a piece of PII was, in the original text; the value itself is not kept, so findings can be logged."""

    label: str
    start: int
    end: int


@dataclass(frozen=True)
class Redaction:
    text: str
    """The original text with every finding replaced by its placeholder, e.g. "[EMAIL]"."""
    findings: list[Finding]


@dataclass(frozen=True)
class Detector:
    """One kind of PII: a pattern that finds candidates, and an optional check that accepts them."""

    label: str
    pattern: re.Pattern[str]
    check: Callable[[str], bool] | None = None
    trim: bool = False
    """When the check rejects a match, retry it without its last space-separated parts: a pattern that
    allows spaces inside (a grouped IBAN or card number) can run on into the next word or number."""
    claim_rejected: bool = False
    """Whether a match that fails the check still keeps shorter findings of other detectors off its span."""

    def scan(self, text: str) -> Iterator[tuple[int, int, bool]]:
        """Start and end of each match, and whether it is a finding (or a rejected match that claims its span)."""
        for match in self.pattern.finditer(text):
            start, end = match.span()
            # A pattern that can match nothing would otherwise put a placeholder between every character.
            if start == end:
                continue
            if self.check is None:
                yield start, end, True
                continue
            candidate = match.group()
            while not self.check(candidate):
                cut = candidate.rfind(" ")
                if not self.trim or cut <= 0:
                    if self.claim_rejected:
                        yield start, end, False
                    break
                candidate = candidate[:cut].rstrip(" -")
            else:
                yield start, start + len(candidate), True


class Redactor:
    """Finds PII with a list of detectors and replaces it; one instance serves any number of threads."""

    def __init__(self, detectors: Sequence[Detector]) -> None:
        self._detectors = tuple(detectors)

    @classmethod
    def default(cls, extra_patterns: Mapping[str, str] | None = None) -> Redactor:
        """The built-in detectors, plus a bot's own patterns, e.g. {"CUSTOMER_ID": r"\\bC-\\d{6}\\b"}.

        A bot's patterns rank after e-mail, card and IBAN, whose checks make them certain,
        but before phone numbers, the least certain: a bot that declares an identifier means it.
        """
        extras = [_extra_detector(label, pattern) for label, pattern in (extra_patterns or {}).items()]
        return cls([EMAIL, CARD, IBAN, *extras, PHONE])

    def find(self, text: str) -> list[Finding]:
        """The findings in `text`, in order, without overlaps."""
        candidates = [
            (start, end, not accepted, rank, detector.label)
            for rank, detector in enumerate(self._detectors)
            for start, end, accepted in detector.scan(text)
        ]
        chosen: list[tuple[int, int, bool, str]] = []
        # A claim loses a tie: a bot's pattern for a code shaped like an IBAN ("RF18 5390 0754 7034") wins.
        for start, end, claim, _, label in sorted(candidates, key=lambda c: (c[0] - c[1], c[0], c[2], c[3])):
            if all(end <= c[0] or start >= c[1] for c in chosen):
                chosen.append((start, end, claim, label))
        return [Finding(label, start, end) for start, end, claim, label in sorted(chosen) if not claim]

    def redact(self, text: str) -> Redaction:
        findings = self.find(text)
        if not findings:
            return Redaction(text, [])
        parts: list[str] = []
        position = 0
        for finding in findings:
            parts += [text[position : finding.start], f"[{finding.label}]"]
            position = finding.end
        parts.append(text[position:])
        return Redaction("".join(parts), findings)


def _extra_detector(label: str, pattern: str) -> Detector:
    if not label.strip():
        raise ValueError("an extra PII pattern needs a label")
    try:
        compiled = re.compile(pattern)
    except re.error as err:
        raise ValueError(f"extra PII pattern {label!r} is not a valid regular expression: {err}") from err
    if compiled.fullmatch(""):
        raise ValueError(f"extra PII pattern {label!r} matches the empty string")
    return Detector(label, compiled)


def luhn_valid(digits: str) -> bool:
    """The Luhn check of a string of digits: every payment card number passes it."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


# The length of an IBAN in each country of the IBAN registry (SWIFT, ISO 13616). One string in 97
# passes the checksum by chance, and two letters and two digits start many product codes; a grouped
# IBAN followed by a short word ("... 6181 graag") would be one of them now and then.
IBAN_LENGTHS = {
    country: int(length)
    for country, length in (
        entry.split(":")
        for entry in (
            "AD:24 AE:23 AL:28 AT:20 AZ:28 BA:20 BE:16 BG:22 BH:22 BI:27 BR:29 BY:28 CH:21 CR:22 CY:28 "
            "CZ:24 DE:22 DJ:27 DK:18 DO:28 EE:20 EG:29 ES:24 FI:18 FK:18 FO:18 FR:27 GB:22 GE:22 GI:23 "
            "GL:18 GR:27 GT:28 HN:28 HR:21 HU:28 IE:22 IL:23 IQ:23 IS:26 IT:27 JO:30 KW:30 KZ:20 LB:28 "
            "LC:32 LI:21 LT:20 LU:20 LV:21 LY:25 MC:27 MD:24 ME:22 MK:19 MN:20 MR:27 MT:31 MU:30 NI:28 "
            "NL:18 NO:15 OM:23 PK:24 PL:28 PS:29 PT:25 QA:29 RO:24 RS:22 RU:33 SA:24 SC:31 SD:18 SE:24 "
            "SI:19 SK:24 SM:27 SO:23 ST:25 SV:28 TL:23 TN:24 TR:26 UA:29 VA:22 VG:24 XK:20 YE:30"
        ).split()
    )
}


def iban_valid(iban: str) -> bool:
    """The ISO 13616 check: the country code and check digits moved to the end, letters as 10..35, mod 97 is 1."""
    compact = iban.replace(" ", "")
    # Written in one case, upper or lower: "NW981517 shipped" is an order number and a word.
    if not (compact.isupper() or compact.islower()):
        return False
    compact = compact.upper()
    if len(compact) != IBAN_LENGTHS.get(compact[:2]) or not compact.isalnum() or not compact.isascii():
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(char, 36)) for char in rearranged)) % 97 == 1


def _card_valid(candidate: str) -> bool:
    digits = re.sub(r"[ -]", "", candidate)
    if not 13 <= len(digits) <= 19 or (" " in candidate and "-" in candidate):
        return False
    # 15 digits are American Express (34, 37) only: IMEIs are 15 digits too and pass the Luhn check.
    # 13 digits are old Visa numbers (4) only: EAN barcodes are 13 digits and one in ten passes.
    if (len(digits) == 15 and digits[:2] not in ("34", "37")) or (len(digits) == 13 and digits[0] != "4"):
        return False
    return luhn_valid(digits)


_DATE = re.compile(r"(\d{1,2})([./-])(\d{1,2})\2(\d{4}|\d{2})|(\d{4})([./-])(\d{1,2})\6(\d{1,2})")
_IPV4 = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")
_DIGIT_GROUP = re.compile(r"\d+")


def _is_date(candidate: str) -> bool:
    match = _DATE.fullmatch(candidate)
    if match is None:
        return False
    if match.group(5):
        month, day = int(match.group(7)), int(match.group(8))
        return 1 <= month <= 12 and 1 <= day <= 31
    first, second = int(match.group(1)), int(match.group(3))
    # Day first (Europe) or month first (US).
    return 1 <= min(first, second) <= 12 and max(first, second) <= 31


def _parentheses_balanced(candidate: str) -> bool:
    depth = 0
    for char in candidate:
        depth += (char == "(") - (char == ")")
        if not 0 <= depth <= 1:
            return False
    return depth == 0


def _phone_valid(candidate: str) -> bool:
    groups = _DIGIT_GROUP.findall(candidate)
    digits = sum(len(group) for group in groups)
    if not _parentheses_balanced(candidate):
        return False
    if candidate.startswith("+"):
        # E.164 allows 15 digits; a written "(0)" trunk prefix adds one.
        return 8 <= digits <= 15 + ("(0)" in candidate)
    if candidate.startswith("00"):
        # 00 is the international prefix; 000 starts order and invoice numbers, never a phone number.
        return not candidate.startswith("000") and 10 <= digits <= 17
    if not 7 <= digits <= 13 or _is_date(candidate):
        return False
    if _IPV4.fullmatch(candidate) and all(int(group) <= 255 for group in groups):
        return False
    if candidate.startswith("("):
        return True
    if candidate.startswith("0"):
        # A national trunk prefix says it is a phone number; but 8 digits or fewer in one block are
        # more often an order or customer number with a leading zero.
        return len(groups) > 1 or digits >= 9
    # Without a prefix a number must look like one: grouped, with parts of at least two digits after
    # the first (versions and ISBNs have single digits), and one part of three (lists of sizes have none).
    if len(groups) < 2 or any(len(group) < 2 for group in groups[1:]) or max(map(len, groups)) < 3:
        return False
    if len(groups) == 2:
        # 555-0132 (US), 347 1234567 (Italian mobile); not a house number and a postcode, "120 75001".
        first, second = groups
        separator = candidate[len(first)]
        return len(first) == 3 and ((len(second) == 4 and separator in "-.") or 6 <= len(second) <= 8)
    return True


EMAIL = Detector(
    "EMAIL",
    # Starts only at the start of a run of address characters, so long words are not rescanned from
    # every position; an apostrophe belongs to the address inside a name (sean.o'brien@...), not before it.
    re.compile(
        r"(?<![\w.%+-])(?<!\w')[\w.%+-][\w.'%+-]*@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![\w-])"
    ),
)

CARD = Detector(
    "CARD",
    # 2 to 6 start every card network's numbers (Visa 4, Mastercard 2 and 5, Amex 3, Discover 6, ...);
    # 0 and 1 start phone numbers and order numbers.
    re.compile(r"(?<![\w+@#€$£/.,-])(?<!\d[ -])[2-6]\d(?:[ -]?\d){11,17}(?!\w|[.,-]?\d)"),
    check=_card_valid,
    trim=True,
)

IBAN = Detector(
    "IBAN",
    re.compile(
        r"(?<![\w@/.-])[A-Za-z]{2}\d{2}(?:[ ]?[A-Za-z0-9]{4}){2,7}(?:[ ]?[A-Za-z0-9]{1,3})?(?!\w)",
    ),
    check=iban_valid,
    trim=True,
    claim_rejected=True,
)

PHONE = Detector(
    "PHONE",
    re.compile(
        # Not the tail of a word, code, price or URL, nor the second number of a date or a time.
        r"(?<![\w+@#€$£%/.,-])(?<!\d[ .,:/-])"
        # A "+", an area code in parentheses, or one set off by a spaced slash or dash ("0171 / 2345678");
        # then digits with at most one separator between two: elsewhere "123 / 456" is two numbers.
        r"(?:\+|\((?=\d{1,5}\))|0\d{2,4}[ ][/-][ ](?=\d))?\d(?:(?:[ ./-]|\)[ ]?|[ ]?\((?=\d{1,5}\)))?\d)*"
        # Not followed by more of a number: a time after a date, the cents of a price, a longer number.
        r"(?![\w@%€$£]|[ .,:/-]?\d)"
    ),
    check=_phone_valid,
)
