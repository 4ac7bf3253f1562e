"""The token bucket as a pure function of (bucket, limit, now): numbers, an injected clock, no sleeps."""

from __future__ import annotations

import pytest

from kaon.errors import InvalidInputError
from kaon.security import RateLimit, take


def test_a_new_bucket_allows_a_burst_then_refuses_with_the_wait() -> None:
    limit = RateLimit(rate_per_s=10.0, burst=3)
    bucket = None
    for _ in range(3):
        decision = take(bucket, limit, now_s=100.0)
        assert decision.allowed and decision.retry_after_s == 0.0
        bucket = decision.bucket
    refused = take(bucket, limit, now_s=100.0)
    assert not refused.allowed
    assert refused.retry_after_s == pytest.approx(0.1)  # one request's worth refills in 1/rate s


def test_refill_is_proportional_to_elapsed_time_and_capped_at_burst() -> None:
    limit = RateLimit(rate_per_s=2.0, burst=4)
    empty = take(None, limit, 0.0, cost=4).bucket
    assert empty.tokens == 0
    assert not take(empty, limit, 0.25).allowed  # 0.5 token
    half = take(empty, limit, 0.5)  # 1 token: allowed, leaves 0
    assert half.allowed and half.bucket.tokens == pytest.approx(0.0)
    full = take(empty, limit, 1000.0)  # a long pause refills to the burst, not beyond
    assert full.bucket.tokens == pytest.approx(3.0)


def test_sustained_rate_matches_the_limit() -> None:
    limit = RateLimit.per_second(50.0)  # burst defaults to one second's worth
    assert limit.burst == 50
    bucket, allowed = None, 0
    for step in range(10_000):  # 10 s of requests every millisecond
        decision = take(bucket, limit, step / 1000)
        bucket = decision.bucket
        allowed += decision.allowed
    assert 50 * 10 <= allowed <= 50 * 10 + 50 + 1  # the rate, plus the initial burst


def test_a_clock_stepping_back_adds_nothing() -> None:
    limit = RateLimit(rate_per_s=1.0, burst=1)
    used = take(None, limit, 10.0).bucket
    assert not take(used, limit, 5.0).allowed


def test_limits_must_be_positive() -> None:
    with pytest.raises(InvalidInputError, match="rate_per_s > 0"):
        RateLimit(0.0, 1)
    with pytest.raises(InvalidInputError, match="burst >= 1"):
        RateLimit(1.0, 0)
