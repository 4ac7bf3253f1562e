"""The token bucket: numbers and an injected clock, no sleeps."""

from __future__ import annotations

import pytest

from kaon.errors import InvalidInputError
from kaon.security import Bucket, RateLimit


def test_a_new_bucket_allows_a_burst_then_refuses_with_the_wait() -> None:
    limit = RateLimit(rate_per_s=10.0, burst=3)
    bucket = Bucket(limit, now_s=100.0)
    assert [bucket.take(limit, now_s=100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(limit, now_s=100.0) == pytest.approx(0.1)  # one request's worth refills in 1/rate s
    assert bucket.tokens == pytest.approx(0.0)  # a refusal takes nothing


def test_refill_is_proportional_to_elapsed_time_and_capped_at_burst() -> None:
    limit = RateLimit(rate_per_s=2.0, burst=4)
    bucket = Bucket(limit, 0.0)
    assert bucket.take(limit, 0.0, cost=4) == 0.0 and bucket.tokens == 0
    assert bucket.take(limit, 0.25) == pytest.approx(0.25)  # 0.5 token: half a token short, 0.25 s at 2/s
    assert bucket.take(limit, 0.5) == 0.0  # 1 token: allowed, leaves 0
    assert bucket.tokens == pytest.approx(0.0)
    assert bucket.take(limit, 1000.0) == 0.0  # a long pause refills to the burst, not beyond
    assert bucket.tokens == pytest.approx(3.0)


def test_sustained_rate_matches_the_limit() -> None:
    limit = RateLimit.per_second(50.0)  # burst defaults to one second's worth
    assert limit.burst == 50
    bucket = Bucket(limit, 0.0)
    allowed = sum(bucket.take(limit, step / 1000) == 0.0 for step in range(10_000))  # 10 s, one every ms
    assert 50 * 10 <= allowed <= 50 * 10 + 50 + 1  # the rate, plus the initial burst


def test_a_clock_stepping_back_adds_nothing() -> None:
    limit = RateLimit(rate_per_s=1.0, burst=1)
    bucket = Bucket(limit, 10.0)
    assert bucket.take(limit, 10.0) == 0.0
    assert bucket.take(limit, 5.0) > 0
    assert bucket.take(limit, 5.5) > 0
    assert bucket.take(limit, 10.5) > 0  # half a second after 10.0, the latest time seen: half a token


def test_stale_times_do_not_refill_twice() -> None:
    """A time read before an await arrives after a later one: the bucket refilled from the stale time again,
    letting through about twice the rate (6 takes in 0.5 s at 1/s, burst 1)."""
    limit = RateLimit(rate_per_s=1.0, burst=1)
    bucket = Bucket(limit, 0.0)
    allowed = 0
    for step in range(50):  # 5 s; every other call carries a time 0.5 s old
        now_s = step * 0.1
        allowed += bucket.take(limit, now_s) == 0.0
        allowed += bucket.take(limit, max(0.0, now_s - 0.5)) == 0.0
    assert allowed <= 1 + 5  # the burst, plus 5 s at 1/s


def test_a_new_limit_applies_to_a_bucket_at_once() -> None:
    slow, fast = RateLimit(1.0, 1), RateLimit(100.0, 1)
    bucket = Bucket(slow, 0.0)
    assert bucket.take(slow, 0.0) == 0.0
    assert bucket.take(fast, 0.01) == 0.0  # refilled at the new rate
    assert bucket.take(slow, 0.02) == pytest.approx(0.99)


def test_limits_must_be_positive() -> None:
    with pytest.raises(InvalidInputError, match="rate_per_s > 0"):
        RateLimit(0.0, 1)
    with pytest.raises(InvalidInputError, match="burst >= 1"):
        RateLimit(1.0, 0)
