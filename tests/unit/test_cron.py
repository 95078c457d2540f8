"""Cron grammar, ordinary iteration, bounds and jitter; expected instants written out."""

from __future__ import annotations

from datetime import timedelta
from itertools import pairwise

import pytest

from server.engine.schedule import (
    InvalidCronExpression,
    InvalidTimeZone,
    jitter_offset,
    next_ticks,
    parse_cron,
    parse_time_zone,
)
from tests.unit.cron_helpers import fires, spec, utc


def test_six_fields_put_seconds_first() -> None:
    assert fires(spec("* * * * * *"), "2024-01-01T00:00:00.500000Z", 3) == [
        "2024-01-01T00:00:01Z",
        "2024-01-01T00:00:02Z",
        "2024-01-01T00:00:03Z",
    ]
    # Second 5 of every minute, not minute 5.
    assert fires(spec("5 * * * * *"), "2024-01-01T00:00:00Z", 2) == [
        "2024-01-01T00:00:05Z",
        "2024-01-01T00:01:05Z",
    ]


def test_every_fifteen_minutes_is_strictly_after_the_given_instant() -> None:
    assert fires(spec("*/15 * * * *"), "2024-01-01T00:15:00Z", 3) == [
        "2024-01-01T00:30:00Z",
        "2024-01-01T00:45:00Z",
        "2024-01-01T01:00:00Z",
    ]


def test_day_31_skips_short_months() -> None:
    assert fires(spec("0 0 31 * *"), "2024-01-01T00:00:00Z", 5) == [
        "2024-01-31T00:00:00Z",
        "2024-03-31T00:00:00Z",
        "2024-05-31T00:00:00Z",
        "2024-07-31T00:00:00Z",
        "2024-08-31T00:00:00Z",
    ]


def test_february_29_waits_for_a_leap_year() -> None:
    assert fires(spec("0 0 29 2 *"), "2024-03-01T00:00:00Z", 1) == ["2028-02-29T00:00:00Z"]


def test_restricted_day_of_month_and_week_match_either() -> None:
    # The 10th, or any Friday (2024-09-01 is a Sunday).
    assert fires(spec("0 0 10 * fri"), "2024-09-01T00:00:00Z", 4) == [
        "2024-09-06T00:00:00Z",
        "2024-09-10T00:00:00Z",
        "2024-09-13T00:00:00Z",
        "2024-09-20T00:00:00Z",
    ]


def test_a_star_prefixed_day_field_makes_both_required() -> None:
    # Days 1, 11, 21, 31 that are also Fridays.
    assert fires(spec("0 0 */10 * 5"), "2024-09-01T00:00:00Z", 3) == [
        "2024-10-11T00:00:00Z",
        "2024-11-01T00:00:00Z",
        "2025-01-31T00:00:00Z",
    ]


def test_shorthands_names_and_sunday_as_seven() -> None:
    assert fires(spec("@yearly"), "2024-06-01T00:00:00Z", 2) == [
        "2025-01-01T00:00:00Z",
        "2026-01-01T00:00:00Z",
    ]
    assert fires(spec("@ANNUALLY"), "2024-06-01T00:00:00Z", 1) == ["2025-01-01T00:00:00Z"]
    weekly = ["2024-09-08T00:00:00Z", "2024-09-15T00:00:00Z"]
    assert fires(spec("@weekly"), "2024-09-02T00:00:00Z", 2) == weekly
    assert fires(spec("0 0 * * 7"), "2024-09-02T00:00:00Z", 2) == weekly
    assert fires(spec("@monthly"), "2024-09-02T00:00:00Z", 1) == ["2024-10-01T00:00:00Z"]
    assert fires(spec("@hourly"), "2024-09-02T00:00:00Z", 1) == ["2024-09-02T01:00:00Z"]
    assert fires(spec("@midnight"), "2024-09-02T00:00:00Z", 1) == ["2024-09-03T00:00:00Z"]
    assert fires(spec("30 9 * JAN-mar Mon-Fri"), "2024-03-29T12:00:00Z", 2) == [
        "2025-01-01T09:30:00Z",
        "2025-01-02T09:30:00Z",
    ]


def test_ranges_steps_and_lists() -> None:
    assert fires(spec("10-20/5,45 8 * * *"), "2024-01-01T00:00:00Z", 4) == [
        "2024-01-01T08:10:00Z",
        "2024-01-01T08:15:00Z",
        "2024-01-01T08:20:00Z",
        "2024-01-01T08:45:00Z",
    ]
    # `a/s` runs from a to the field's end.
    assert fires(spec("0 20/2 * * *"), "2024-01-01T00:00:00Z", 3) == [
        "2024-01-01T20:00:00Z",
        "2024-01-01T22:00:00Z",
        "2024-01-02T20:00:00Z",
    ]


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("", "is empty"),
        (
            "* * * *",
            "has 4 fields; expected 5 (minute hour day-of-month month day-of-week), "
            "6 with seconds first, or a shorthand such as @daily",
        ),
        ("61 * * * *", "minute 61 is out of range 0-59"),
        ("0 24 * * *", "hour 24 is out of range 0-23"),
        ("0 0 0 * *", "day-of-month 0 is out of range 1-31"),
        ("0 0 * 13 *", "month 13 is out of range 1-12"),
        ("0 0 * * 8", "day-of-week 8 is out of range 0-7"),
        ("60 * * * * *", "second 60 is out of range 0-59"),
        ("0 5-2 * * *", "hour range '5-2' runs backwards; write it as a list instead"),
        ("*/0 * * * *", "minute step '0' in '*/0' must be a positive integer"),
        ("0 0 L * *", "day-of-month 'L' uses a Quartz extension, which is not supported"),
        ("0 0 ? * 1", "day-of-month '?' uses a Quartz extension, which is not supported"),
        ("0 0 * * 1#2", "day-of-week '1#2' uses a Quartz extension, which is not supported"),
        ("0 x * * *", "hour 'x' is not a number"),
        ("0,,5 * * * *", "minute field '0,,5' has an empty list item"),
        ("0 0 30 2 *", "day-of-month 30 never occurs in month(s) 2"),
        ("0 0 31 4,6 *", "day-of-month 31 never occurs in month(s) 4,6"),
        (
            "@reboot",
            "unknown shorthand '@reboot'; use one of @annually, @daily, @hourly, "
            "@midnight, @monthly, @weekly, @yearly",
        ),
    ],
)
def test_bad_expressions_say_what_is_wrong(expression: str, message: str) -> None:
    with pytest.raises(InvalidCronExpression) as raised:
        parse_cron(expression)
    assert str(raised.value) == message


def test_february_30_is_fine_when_a_weekday_can_match() -> None:
    # Both day fields restricted: any Monday in February fires.
    assert fires(spec("0 0 30 2 1"), "2024-01-01T00:00:00Z", 1) == ["2024-02-05T00:00:00Z"]


def test_time_zones() -> None:
    assert parse_time_zone("").key == "UTC"
    assert parse_time_zone("Europe/Paris").key == "Europe/Paris"
    for bad in ("Mars/Olympus", "../etc/passwd", "Europe/" + "x" * 300):
        with pytest.raises(InvalidTimeZone, match="is not an IANA time zone"):
            parse_time_zone(bad)


def test_start_and_end_are_inclusive_bounds() -> None:
    bounded = spec("0 * * * *", start="2024-01-01T03:00:00Z", end="2024-01-01T05:00:00Z")
    assert fires(bounded, "2024-01-01T00:00:00Z", 10) == [
        "2024-01-01T03:00:00Z",
        "2024-01-01T04:00:00Z",
        "2024-01-01T05:00:00Z",
    ]
    assert fires(bounded, "2024-01-01T04:00:00Z", 10) == ["2024-01-01T05:00:00Z"]
    assert fires(bounded, "2024-01-01T05:00:00Z", 10) == []


def test_jitter_is_deterministic_bounded_and_never_past_the_next_tick() -> None:
    every_minute = spec("* * * * *", jitter=timedelta(seconds=20))
    ticks = next_ticks(every_minute, utc("2024-01-01T00:00:00Z"), 50, "wf/a")
    again = next_ticks(every_minute, utc("2024-01-01T00:00:00Z"), 50, "wf/a")
    other = next_ticks(every_minute, utc("2024-01-01T00:00:00Z"), 50, "wf/b")
    assert ticks == again
    assert [t.fire_at for t in ticks] != [t.fire_at for t in other]
    delays = [t.fire_at - t.nominal for t in ticks]
    assert all(timedelta(0) <= d < timedelta(seconds=20) for d in delays)
    assert len(set(delays)) > 40  # spread, not a constant

    # A jitter longer than the interval is cut short of the next tick.
    every_second = spec("* * * * * *", jitter=timedelta(hours=1))
    ticks = next_ticks(every_second, utc("2024-01-01T00:00:00Z"), 50, "wf/a")
    assert all(a.fire_at < b.nominal for a, b in pairwise(ticks))
    assert max(t.fire_at - t.nominal for t in ticks) > timedelta(milliseconds=500)


def test_jitter_of_the_last_tick_is_bounded_by_the_jitter_alone() -> None:
    nominal = utc("2024-01-01T00:00:00Z")
    delay = jitter_offset("wf/a", nominal, timedelta(seconds=5), None)
    assert timedelta(0) <= delay < timedelta(seconds=5)
    assert jitter_offset("wf/a", nominal, timedelta(0), None) == timedelta(0)
    assert jitter_offset("wf/a", nominal, timedelta(seconds=5), timedelta(0)) == timedelta(0)


def test_ticks_stay_within_the_representable_years() -> None:
    """Instants near datetime's limits (a hostile start time, a zone's offset, jitter) end the
    ticks rather than overflow: no tick after year 9000, none before 1900."""
    far = spec("0 3 1 1 *", "Pacific/Kiritimati", start="9999-12-31T23:00:00Z")
    assert fires(far, "2026-01-01T00:00:00Z", 3) == []
    assert fires(spec("0 3 1 1 *"), "8998-06-01T00:00:00Z", 5) == ["8999-01-01T03:00:00Z"]
    early = spec("0 0 1 1 *", "Pacific/Kiritimati")
    assert fires(early, "0001-01-01T00:00:00Z", 1)[0].startswith("1900-")
