"""Token-bucket rate limiting as a pure function of (bucket, limit, now).

A bucket holds up to `burst` requests and refills at `rate_per_s`. A request takes one::

    >>> limit = RateLimit(rate_per_s=2.0, burst=2)
    >>> d1 = take(None, limit, now_s=0.0); d2 = take(d1.bucket, limit, now_s=0.0)
    >>> d3 = take(d2.bucket, limit, now_s=0.0)
    >>> d1.allowed, d2.allowed, d3.allowed, d3.retry_after_s
    (True, True, False, 0.5)
    >>> take(d3.bucket, limit, now_s=0.5).allowed
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from kaon.errors import InvalidInputError


@dataclass(frozen=True)
class RateLimit:
    rate_per_s: float
    burst: int

    def __post_init__(self) -> None:
        if not self.rate_per_s > 0 or self.burst < 1:
            raise InvalidInputError(
                f"a rate limit needs rate_per_s > 0 and burst >= 1. "
                f"Received: rate_per_s={self.rate_per_s!r}, burst={self.burst!r}"
            )

    @classmethod
    def per_second(cls, rate_per_s: float, burst: int | None = None) -> RateLimit:
        """A limit whose burst defaults to one second's worth of requests (at least 1)."""
        return cls(rate_per_s, burst if burst is not None else max(1, round(rate_per_s)))


class Bucket(NamedTuple):  # tuples: made on every request, and a frozen dataclass costs ~5x more to build
    tokens: float
    updated_s: float


class Decision(NamedTuple):
    allowed: bool
    retry_after_s: float  # 0 when allowed; else how long until one request's worth has refilled
    bucket: Bucket


def take(bucket: Bucket | None, limit: RateLimit, now_s: float, cost: float = 1.0) -> Decision:
    """Refill `bucket` up to `now_s`, then take `cost` if there is that much. A new bucket starts full."""
    if bucket is None:
        tokens = float(limit.burst)
    else:
        elapsed_s = max(0.0, now_s - bucket.updated_s)  # a clock that steps back never adds tokens
        tokens = min(float(limit.burst), bucket.tokens + elapsed_s * limit.rate_per_s)
    if tokens >= cost:
        return Decision(True, 0.0, Bucket(tokens - cost, now_s))
    return Decision(False, (cost - tokens) / limit.rate_per_s, Bucket(tokens, now_s))
