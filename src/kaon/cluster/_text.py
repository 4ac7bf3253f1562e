"""Words for counts in messages: `plural(1, "replica")` is '1 replica', `plural(2, "replica")` '2 replicas'."""

from __future__ import annotations


def plural(count: int, noun: str) -> str:
    """`count` and `noun`, with an s unless the count is one.

    >>> plural(1, "replica"), plural(0, "replica")
    ('1 replica', '0 replicas')
    """
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
