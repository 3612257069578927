"""PII redaction: recall and precision on a synthetic set of shop messages, and the rules behind them.

The set, tests/data/pii.jsonl, is written by tests/data/make_pii.py: 360 messages, half with
e-mail addresses, phone numbers, card numbers and IBANs in varied formats, half with only
look-alikes (order and tracking numbers, prices, dates, failing checksums). `pytest -s` prints
the scores.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections import Counter
from pathlib import Path

import pytest

from dialogue.security.privacy.redaction import Finding, Redactor

pytestmark = pytest.mark.unit  # pure code: `make check` runs it

PII_SET = Path(__file__).parent / "data" / "pii.jsonl"
LABELS = ("EMAIL", "PHONE", "CARD", "IBAN")

# Measured: recall 0.990 and precision 1.000 overall (207 of 209 spans, no false finding); recall
# 1.0 for EMAIL, CARD and IBAN, 0.971 for PHONE (the misses: numbers with neither a prefix nor grouping,
# "612345678", "4155550519"). The detectors were tuned while looking at this set: on 30 sets from other
# seeds of make_pii.py (10,800 messages) recall is 0.989 and precision 0.998. The set is deterministic,
# so the margin is for changes to the detectors, not noise: about two more misses or false findings.
MIN_RECALL = 0.98
MIN_PRECISION = 0.98
MIN_LABEL_RECALL = 0.95
MIN_LABEL_PRECISION = 0.95

Span = tuple[str, int, int]


@dataclasses.dataclass
class Score:
    found: int = 0
    missed: int = 0
    false: int = 0

    @property
    def recall(self) -> float:
        return self.found / (self.found + self.missed) if self.found + self.missed else 1.0

    @property
    def precision(self) -> float:
        return self.found / (self.found + self.false) if self.found + self.false else 1.0


def load_set() -> list[tuple[str, set[Span]]]:
    records = []
    for line in PII_SET.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        spans = {(s["label"], s["start"], s["end"]) for s in record["spans"]}
        records.append((record["text"], spans))
    return records


def score(records: list[tuple[str, set[Span]]], *, lenient: bool) -> dict[str, Score]:
    """Per label and "ALL": exact match of label, start and end; or, lenient, any overlap with the same label."""
    redactor = Redactor.default()
    scores = {label: Score() for label in (*LABELS, "ALL")}

    def matches(span: Span, others: set[Span]) -> bool:
        if not lenient:
            return span in others
        return any(o[0] == span[0] and o[1] < span[2] and span[1] < o[2] for o in others)

    for text, gold in records:
        predicted = {(f.label, f.start, f.end) for f in redactor.find(text)}
        for span in gold:
            field = "found" if matches(span, predicted) else "missed"
            for key in (span[0], "ALL"):
                setattr(scores[key], field, getattr(scores[key], field) + 1)
        for span in predicted:
            if not matches(span, gold):
                for key in (span[0], "ALL"):
                    scores[key].false += 1
    return scores


@pytest.fixture(scope="module")
def records() -> list[tuple[str, set[Span]]]:
    return load_set()


def test_the_set_is_large_balanced_and_its_spans_exact(records: list[tuple[str, set[Span]]]) -> None:
    assert len(records) >= 300
    with_pii = sum(1 for _, spans in records if spans)
    assert 0.4 <= with_pii / len(records) <= 0.6
    labels = Counter(label for _, spans in records for label, _, _ in spans)
    assert all(labels[label] >= 30 for label in LABELS), labels
    for text, spans in records:
        for label, start, end in spans:
            value = text[start:end]
            assert label in LABELS and 0 <= start < end <= len(text)
            assert value == value.strip(), (text, value)
        ordered = sorted(spans, key=lambda s: s[1])
        assert all(a[2] <= b[1] for a, b in itertools.pairwise(ordered)), text


def test_recall_and_precision_on_the_set(records: list[tuple[str, set[Span]]]) -> None:
    exact = score(records, lenient=False)
    lenient = score(records, lenient=True)
    print(f"\nPII redaction on {len(records)} messages ({PII_SET.name})")
    print(
        f"{'label':<6} {'spans':>5} {'found':>5} {'false':>5} {'recall':>7} {'precision':>9}   lenient R / P"
    )
    for label, s in exact.items():
        loose = lenient[label]
        print(
            f"{label:<6} {s.found + s.missed:>5} {s.found:>5} {s.false:>5} {s.recall:>7.3f} {s.precision:>9.3f}"
            f"   {loose.recall:.3f} / {loose.precision:.3f}"
        )
    overall = exact["ALL"]
    assert overall.recall >= MIN_RECALL
    assert overall.precision >= MIN_PRECISION
    for label in LABELS:
        assert exact[label].recall >= MIN_LABEL_RECALL, label
        assert exact[label].precision >= MIN_LABEL_PRECISION, label


@pytest.fixture(scope="module")
def redactor() -> Redactor:
    return Redactor.default()


def test_placeholders_and_offsets_in_the_original_text(redactor: Redactor) -> None:
    text = "Mail Anna.Schmidt+shop@Mail.Example.de, call +49 (0)30 1234567, IBAN DE89 3704 0044 0532 0130 00."
    redaction = redactor.redact(text)
    assert redaction.text == "Mail [EMAIL], call [PHONE], IBAN [IBAN]."
    assert [(f.label, text[f.start : f.end]) for f in redaction.findings] == [
        ("EMAIL", "Anna.Schmidt+shop@Mail.Example.de"),
        ("PHONE", "+49 (0)30 1234567"),
        ("IBAN", "DE89 3704 0044 0532 0130 00"),
    ]


@pytest.mark.parametrize(
    "card",
    ["4111 1111 1111 1111", "4111-1111-1111-1111", "5555555555554444", "3782 822463 10005"],
)
def test_a_card_number_is_a_card_never_a_phone_number(redactor: Redactor, card: str) -> None:
    redaction = redactor.redact(f"card {card} exp 12/27")
    assert redaction.text == "card [CARD] exp 12/27"
    assert [f.label for f in redaction.findings] == ["CARD"]


def test_a_card_number_followed_by_its_expiry_date_is_still_found(redactor: Redactor) -> None:
    assert redactor.redact("4111 1111 1111 1111 12/27").text == "[CARD] 12/27"


@pytest.mark.parametrize("number", ["4111 1111 1111 1112", "4111111111111112", "5555-5555-5555-4445"])
def test_a_16_digit_number_failing_luhn_is_left_alone(redactor: Redactor, number: str) -> None:
    text = f"My card {number} was declined"
    assert redactor.redact(text).text == text


@pytest.mark.parametrize(
    "iban",
    [
        "DE88 3704 0044 0532 0130 00",
        "DE89370400440532013001",
        "NL91 ABNA 0417 1643 01",
        "GB29NWBK60161331926818",
        "LU88 2473 Y18Z 0212 4336",
    ],
)
def test_an_iban_with_a_wrong_checksum_is_left_alone(redactor: Redactor, iban: str) -> None:
    assert redactor.redact(f"transfer to {iban} please").findings == []


@pytest.mark.parametrize(
    "text",
    [
        "Order NW-482913 costs 12.90 and arrives on 2026-11-24.",
        "Bestellung NW-482913 vom 24.11.2026, 14:30 Uhr, €1,299.00 bzw. 1.299,00 €.",
        "3 x 250 g, size 42, version 10.0.19045.3803, router 192.168.178.1, 10115 Berlin.",
        "Tracking 00340434161094042557 or 1Z999AA10123456784, see https://shop.example.com/orders/482913",
    ],
)
def test_order_ids_prices_dates_and_other_numbers_are_untouched(redactor: Redactor, text: str) -> None:
    redaction = redactor.redact(text)
    assert redaction.text == text
    assert redaction.findings == []


def test_a_bots_extra_pattern_is_redacted_with_its_label() -> None:
    redactor = Redactor.default({"CUSTOMER_ID": r"\bC-\d{6}\b"})
    redaction = redactor.redact("I am customer C-123456, mail me at jan@example.nl")
    assert redaction.text == "I am customer [CUSTOMER_ID], mail me at [EMAIL]"
    assert [f.label for f in redaction.findings] == ["CUSTOMER_ID", "EMAIL"]


def test_a_bots_pattern_wins_a_tie_with_a_phone_number_and_the_longer_match_wins_otherwise() -> None:
    redactor = Redactor.default({"HOTLINE": r"0800 \d{7}", "SHORT": r"\d{3} \d{4}"})
    assert redactor.redact("call 0800 1234567 or +49 30 123 4567").text == "call [HOTLINE] or [PHONE]"


def test_a_bots_pattern_for_a_code_shaped_like_an_iban_is_not_hidden_by_the_failed_iban_check() -> None:
    redactor = Redactor.default({"CREDITOR_REF": r"RF\d{2}(?: ?[A-Z0-9]{4}){3}"})
    assert redactor.redact("reference RF18 5390 0754 7034").text == "reference [CREDITOR_REF]"


def test_an_invalid_extra_pattern_raises_a_value_error_naming_its_label() -> None:
    with pytest.raises(ValueError, match="CUSTOMER_ID"):
        Redactor.default({"CUSTOMER_ID": r"\bC-(\d{6}\b"})
    with pytest.raises(ValueError, match="ANYTHING"):
        Redactor.default({"ANYTHING": r"\d*"})


def test_findings_hold_no_matched_text(redactor: Redactor) -> None:
    text = "jan@example.nl, 0171 2345678, 4111 1111 1111 1111, DE89 3704 0044 0532 0130 00"
    findings = redactor.redact(text).findings
    assert [field.name for field in dataclasses.fields(Finding)] == ["label", "start", "end"]
    assert len(findings) == 4
    for finding in findings:
        assert text[finding.start : finding.end] not in repr(finding)
