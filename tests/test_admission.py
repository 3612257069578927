"""The admission arithmetic of load shedding, as plain functions and a clock the test moves."""

from __future__ import annotations

import pytest

from api.limits import RATE_WINDOW_SECONDS, AnswerRate, admission_limit

pytestmark = pytest.mark.unit  # pure code: `make check` runs it


def test_the_limit_is_what_the_stack_answers_within_the_budget() -> None:
    assert admission_limit(answered_per_second=40, budget_seconds=2, limit=1000, floor=64) == 80
    assert (
        admission_limit(answered_per_second=40.2, budget_seconds=2, limit=1000, floor=64) == 81
    )  # rounded up


def test_the_floor_holds_after_a_quiet_spell_and_the_ceiling_always() -> None:
    assert admission_limit(answered_per_second=0, budget_seconds=2, limit=1000, floor=64) == 64
    assert admission_limit(answered_per_second=900, budget_seconds=2, limit=1000, floor=64) == 1000


def test_the_rate_counts_whole_seconds_of_the_last_window_only() -> None:
    now = [100.5]
    rate = AnswerRate(clock=lambda: now[0])
    for _ in range(10):
        rate.count()
    assert rate.per_second() == 0  # the current second is still filling
    now[0] = 101.2
    assert rate.per_second() == 10 / RATE_WINDOW_SECONDS
    now[0] = 100 + RATE_WINDOW_SECONDS + 1.0
    assert rate.per_second() == 0  # out of the window
