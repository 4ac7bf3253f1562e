"""Cron-like replica floors: "at least 3 replicas on weekdays from 9 to 17 (UTC)".

A rule's `cron` has the five crontab fields (minute hour day-of-month month day-of-week); the floor
holds during every minute the expression matches. Fields take `*`, numbers, ranges `a-b`, lists
`a,b` and steps `*/n` or `a-b/n`; day-of-week runs 0-6 from Sunday (7 is Sunday too).

    >>> rule = ScheduleRule(cron="* 9-16 * * 1-5", min_replicas=3)
    >>> scheduled_floor([rule], now=1_700_470_800.0)   # Monday 2023-11-20 09:00 UTC
    3
    >>> scheduled_floor([rule], now=1_700_442_000.0)   # the same Monday, 01:00 UTC
    0
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import pydantic

from kaon.errors import ConfigError

_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12), ("day of week", 0, 7))


class ScheduleRule(pydantic.BaseModel):
    """At least `min_replicas` replicas whenever `cron` matches the current minute (UTC)."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    cron: str
    min_replicas: int = pydantic.Field(ge=0)

    @pydantic.field_validator("cron")
    @classmethod
    def _check_cron(cls, value: str) -> str:
        try:
            parse_cron(value)
        except ConfigError as exc:
            raise ValueError(exc.message) from None
        return value


def parse_cron(expression: str) -> tuple[frozenset[int], ...]:
    """The allowed values of each of the five fields; raises ConfigError naming the bad field."""
    parts = expression.split()
    if len(parts) != 5:
        raise ConfigError(
            "a schedule's cron needs five fields: minute hour day-of-month month day-of-week, "
            f"e.g. '* 9-16 * * 1-5'. Received: {expression!r} ({len(parts)} fields)"
        )
    fields = []
    for text, (name, low, high) in zip(parts, _FIELDS, strict=True):
        values: set[int] = set()
        for item in text.split(","):
            values |= _parse_item(item, name, low, high, expression)
        if name == "day of week" and 7 in values:
            values = (values - {7}) | {0}
        fields.append(frozenset(values))
    return tuple(fields)


def _parse_item(item: str, name: str, low: int, high: int, expression: str) -> set[int]:
    def bad(why: str) -> ConfigError:
        return ConfigError(f"cron field '{name}' {why}; expected {low}-{high}, '*', 'a-b', 'a,b' or '*/n'. "
                           f"Received: {item!r} in {expression!r}")

    base, _, step_text = item.partition("/")
    try:
        step = int(step_text) if step_text else 1
    except ValueError as exc:
        raise bad("has a step that is not a number") from exc
    if step < 1:
        raise bad("has a step below 1")
    if base == "*":
        start, stop = low, high
    else:
        first, _, last = base.partition("-")
        try:
            start = int(first)
            stop = int(last) if last else (high if step_text else start)
        except ValueError as exc:
            raise bad("is not a number") from exc
    if not (low <= start <= stop <= high):
        raise bad("is out of range")
    return set(range(start, stop + 1, step))


def cron_matches(expression: str, now: float) -> bool:
    """Whether the minute holding `now` (seconds since the epoch, UTC) matches `expression`."""
    minute, hour, day, month, weekday = parse_cron(expression)
    t = dt.datetime.fromtimestamp(now, tz=dt.timezone.utc)
    dow = (t.weekday() + 1) % 7  # Python: Monday=0; cron: Sunday=0
    return t.minute in minute and t.hour in hour and t.day in day and t.month in month and dow in weekday


def scheduled_floor(rules: Sequence[ScheduleRule], now: float) -> int:
    """The highest `min_replicas` among the rules that match `now`; 0 when none does."""
    return max((rule.min_replicas for rule in rules if cron_matches(rule.cron, now)), default=0)
