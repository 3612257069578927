"""The admission arithmetic of load shedding, as plain functions and a clock the test moves."""

from __future__ import annotations

import pytest

from api.limits import RATE_WINDOW_SECONDS, AnswerRate, admission_limit, fair_share, tenant_admitted

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


def test_below_the_limit_every_tenant_is_admitted_even_past_its_share() -> None:
    assert tenant_admitted(held=90, in_flight=99, tenants=2, limit=100, share_floor=4)


def test_at_the_limit_a_tenant_under_its_fair_share_is_admitted_and_the_flooder_is_not() -> None:
    # One tenant holds the whole limit; a second comes: its share is half.
    assert tenant_admitted(held=0, in_flight=100, tenants=2, limit=100, share_floor=4)
    assert tenant_admitted(held=49, in_flight=149, tenants=2, limit=100, share_floor=4)
    assert not tenant_admitted(held=50, in_flight=150, tenants=2, limit=100, share_floor=4)
    assert not tenant_admitted(held=100, in_flight=150, tenants=2, limit=100, share_floor=4)


def test_a_lone_tenant_has_the_whole_limit_and_no_more() -> None:
    assert fair_share(100, 1, 4) == 100
    assert not tenant_admitted(held=100, in_flight=100, tenants=1, limit=100, share_floor=4)
    assert fair_share(2, 1, 4) == 2  # the floor never passes the limit


def test_many_tenants_each_keep_the_floor_within_twice_the_limit() -> None:
    assert fair_share(64, 100, 4) == 4
    assert tenant_admitted(held=3, in_flight=100, tenants=100, limit=64, share_floor=4)
    assert not tenant_admitted(held=0, in_flight=128, tenants=100, limit=64, share_floor=4)  # the ceiling
