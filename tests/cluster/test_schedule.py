"""Cron-like floors: parsing, matching in UTC, and the messages for a bad expression."""

from __future__ import annotations

import pydantic
import pytest

from kaon.cluster.schedule import ScheduleRule, cron_matches, parse_cron, scheduled_floor
from kaon.errors import ConfigError

MONDAY_9AM_UTC = 1_700_470_800.0  # 2023-11-20 09:00 UTC


def test_parse_cron_fields_ranges_lists_and_steps():
    minute, hour, day, month, weekday = parse_cron("*/15 9-17/4 1,15 * 0,7")
    assert minute == {0, 15, 30, 45}
    assert hour == {9, 13, 17}
    assert day == {1, 15}
    assert month == set(range(1, 13))
    assert weekday == {0}  # 7 is Sunday too


@pytest.mark.parametrize(("now", "expected"), [
    (MONDAY_9AM_UTC, True),
    (MONDAY_9AM_UTC - 60, False),  # 08:59
    (MONDAY_9AM_UTC + 8 * 3600 - 60, True),  # 16:59
    (MONDAY_9AM_UTC + 8 * 3600, False),  # 17:00
    (MONDAY_9AM_UTC - 86400, False),  # Sunday
])
def test_cron_matches_weekday_office_hours(now, expected):
    assert cron_matches("* 9-16 * * 1-5", now) is expected


def test_highest_matching_floor_wins():
    rules = [ScheduleRule(cron="* * * * *", min_replicas=1), ScheduleRule(cron="0-9 9 * * *", min_replicas=4)]
    assert scheduled_floor(rules, MONDAY_9AM_UTC) == 4
    assert scheduled_floor(rules, MONDAY_9AM_UTC + 600) == 1
    assert scheduled_floor([], MONDAY_9AM_UTC) == 0


@pytest.mark.parametrize(("expression", "message"), [
    ("* * *", "five fields"),
    ("61 * * * *", "'minute' is out of range"),
    ("* x * * *", "'hour' is not a number"),
    ("*/0 * * * *", "step below 1"),
])
def test_bad_cron_is_refused_naming_the_field(expression, message):
    with pytest.raises(ConfigError, match=message):
        parse_cron(expression)


def test_rule_validates_its_cron_when_built_from_yaml_data():
    with pytest.raises(pydantic.ValidationError, match="five fields"):
        ScheduleRule.model_validate({"cron": "* * *", "min_replicas": 2})
