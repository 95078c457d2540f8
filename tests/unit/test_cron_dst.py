"""Golden DST cases: every expected instant is written out, derived from the zone's rules.

Transitions used (tzdata): America/New_York 2024-03-10 02:00 EST -> 03:00 EDT (07:00Z) and
2024-11-03 02:00 EDT -> 01:00 EST (06:00Z); Europe/London 2024-03-31 01:00 GMT -> 02:00 BST
(01:00Z) and 2024-10-27 02:00 BST -> 01:00 GMT (01:00Z); Australia/Lord_Howe (a 30-minute shift)
2024-04-07 02:00 +11 -> 01:30 +10:30 (2024-04-06T15:00Z) and 2024-10-06 02:00 +10:30 -> 02:30 +11
(2024-10-05T15:30Z); Pacific/Apia 2011-12-29 24:00 -10 -> 2011-12-31 00:00 +14
(2011-12-30T10:00Z): the local day 2011-12-30 never happened.
"""

from __future__ import annotations

from server.engine.schedule import RepeatedTimePolicy, SkippedTimePolicy, next_ticks
from tests.unit.cron_helpers import fires, spec, utc

SKIP = SkippedTimePolicy.SKIP
GAP_END = SkippedTimePolicy.RUN_AT_GAP_END
LAST = RepeatedTimePolicy.LAST


# --- America/New_York --------------------------------------------------------------------------


def test_new_york_daily_in_the_skipped_hour_fires_when_the_gap_ends() -> None:
    daily = spec("30 2 * * *", "America/New_York")
    # 02:30 EST, then 02:30 does not exist: 03:00 EDT, then 02:30 EDT.
    assert fires(daily, "2024-03-08T12:00:00Z", 3) == [
        "2024-03-09T07:30:00Z",
        "2024-03-10T07:00:00Z",
        "2024-03-11T06:30:00Z",
    ]


def test_new_york_daily_in_the_skipped_hour_can_be_skipped() -> None:
    daily = spec("30 2 * * *", "America/New_York", skipped=SKIP)
    assert fires(daily, "2024-03-08T12:00:00Z", 3) == [
        "2024-03-09T07:30:00Z",
        "2024-03-11T06:30:00Z",
        "2024-03-12T06:30:00Z",
    ]


def test_new_york_daily_at_half_past_two_is_not_repeated_at_fall_back() -> None:
    # Only 01:00-01:59 repeats in New York: 02:30 EDT, then 02:30 EST.
    daily = spec("30 2 * * *", "America/New_York")
    assert fires(daily, "2024-11-01T12:00:00Z", 3) == [
        "2024-11-02T06:30:00Z",
        "2024-11-03T07:30:00Z",
        "2024-11-04T07:30:00Z",
    ]


def test_new_york_daily_in_the_repeated_hour_fires_once_at_the_first_occurrence() -> None:
    daily = spec("30 1 * * *", "America/New_York")
    # 01:30 EDT on Nov 3, never again at 01:30 EST (croniter fires at both).
    assert fires(daily, "2024-11-01T12:00:00Z", 3) == [
        "2024-11-02T05:30:00Z",
        "2024-11-03T05:30:00Z",
        "2024-11-04T06:30:00Z",
    ]
    # Asked from inside the repeated hour, after the first occurrence: tomorrow.
    assert fires(daily, "2024-11-03T06:15:00Z", 1) == ["2024-11-04T06:30:00Z"]


def test_new_york_daily_in_the_repeated_hour_can_fire_at_the_last_occurrence() -> None:
    daily = spec("30 1 * * *", "America/New_York", repeated=LAST)
    assert fires(daily, "2024-11-01T12:00:00Z", 3) == [
        "2024-11-02T05:30:00Z",
        "2024-11-03T06:30:00Z",
        "2024-11-04T06:30:00Z",
    ]
    # From inside the first pass, the last occurrence is still ahead.
    assert fires(daily, "2024-11-03T05:45:00Z", 1) == ["2024-11-03T06:30:00Z"]


def test_new_york_hourly_across_spring_forward() -> None:
    hourly = spec("0 * * * *", "America/New_York")
    # 01:00 EST; 02:00 is skipped and fires at 03:00 EDT, which is the same tick as 03:00.
    ticks = next_ticks(hourly, utc("2024-03-10T05:30:00Z"), 3, "wf/hourly")
    assert [t.nominal.isoformat() for t in ticks] == [
        "2024-03-10T06:00:00+00:00",
        "2024-03-10T07:00:00+00:00",
        "2024-03-10T08:00:00+00:00",
    ]
    assert [t.wall_time.hour for t in ticks] == [1, 2, 4]
    skipping = spec("0 * * * *", "America/New_York", skipped=SKIP)
    ticks = next_ticks(skipping, utc("2024-03-10T05:30:00Z"), 3, "wf/hourly")
    assert [t.wall_time.hour for t in ticks] == [1, 3, 4]


def test_new_york_hourly_across_fall_back_fires_each_wall_hour_once() -> None:
    hourly = spec("0 * * * *", "America/New_York")
    # 00:00 EDT, 01:00 EDT, (01:00 EST not again), 02:00 EST, 03:00 EST.
    assert fires(hourly, "2024-11-03T03:30:00Z", 4) == [
        "2024-11-03T04:00:00Z",
        "2024-11-03T05:00:00Z",
        "2024-11-03T07:00:00Z",
        "2024-11-03T08:00:00Z",
    ]
    last = spec("0 * * * *", "America/New_York", repeated=LAST)
    assert fires(last, "2024-11-03T03:30:00Z", 4) == [
        "2024-11-03T04:00:00Z",
        "2024-11-03T06:00:00Z",
        "2024-11-03T07:00:00Z",
        "2024-11-03T08:00:00Z",
    ]


# --- Europe/London -----------------------------------------------------------------------------


def test_london_half_past_one_across_spring_forward() -> None:
    daily = spec("30 1 * * *", "Europe/London")
    # 01:30 GMT; 01:30 does not exist on Mar 31: 02:00 BST; then 01:30 BST.
    assert fires(daily, "2024-03-29T12:00:00Z", 3) == [
        "2024-03-30T01:30:00Z",
        "2024-03-31T01:00:00Z",
        "2024-04-01T00:30:00Z",
    ]
    skipping = spec("30 1 * * *", "Europe/London", skipped=SKIP)
    assert fires(skipping, "2024-03-29T12:00:00Z", 3) == [
        "2024-03-30T01:30:00Z",
        "2024-04-01T00:30:00Z",
        "2024-04-02T00:30:00Z",
    ]


def test_london_half_past_one_across_fall_back() -> None:
    daily = spec("30 1 * * *", "Europe/London")
    assert fires(daily, "2024-10-25T12:00:00Z", 3) == [
        "2024-10-26T00:30:00Z",
        "2024-10-27T00:30:00Z",
        "2024-10-28T01:30:00Z",
    ]
    last = spec("30 1 * * *", "Europe/London", repeated=LAST)
    assert fires(last, "2024-10-25T12:00:00Z", 3) == [
        "2024-10-26T00:30:00Z",
        "2024-10-27T01:30:00Z",
        "2024-10-28T01:30:00Z",
    ]


# --- Australia/Lord_Howe: a 30-minute shift ----------------------------------------------------


def test_lord_howe_quarter_past_two_across_the_october_gap() -> None:
    daily = spec("15 2 * * *", "Australia/Lord_Howe")
    # 02:15 +10:30; 02:00-02:29 is skipped on Oct 6: 02:30 +11; then 02:15 +11.
    assert fires(daily, "2024-10-04T12:00:00Z", 3) == [
        "2024-10-04T15:45:00Z",
        "2024-10-05T15:30:00Z",
        "2024-10-06T15:15:00Z",
    ]
    skipping = spec("15 2 * * *", "Australia/Lord_Howe", skipped=SKIP)
    assert fires(skipping, "2024-10-04T12:00:00Z", 2) == [
        "2024-10-04T15:45:00Z",
        "2024-10-06T15:15:00Z",
    ]


def test_lord_howe_quarter_past_two_in_april_is_after_the_repeated_half_hour() -> None:
    daily = spec("15 2 * * *", "Australia/Lord_Howe")
    # 02:15 +11, then 02:15 +10:30 (01:30-01:59 repeats, 02:15 does not).
    assert fires(daily, "2024-04-05T12:00:00Z", 3) == [
        "2024-04-05T15:15:00Z",
        "2024-04-06T15:45:00Z",
        "2024-04-07T15:45:00Z",
    ]


def test_lord_howe_repeated_half_hour_fires_once() -> None:
    daily = spec("45 1 * * *", "Australia/Lord_Howe")
    assert fires(daily, "2024-04-05T12:00:00Z", 3) == [
        "2024-04-05T14:45:00Z",
        "2024-04-06T14:45:00Z",
        "2024-04-07T15:15:00Z",
    ]
    last = spec("45 1 * * *", "Australia/Lord_Howe", repeated=LAST)
    assert fires(last, "2024-04-05T12:00:00Z", 2) == [
        "2024-04-05T14:45:00Z",
        "2024-04-06T15:15:00Z",
    ]


# --- Pacific/Apia: 2011-12-30 never happened ---------------------------------------------------


def test_apia_daily_midnight_fires_once_for_the_missing_day_and_the_next() -> None:
    # Midnight of Dec 30 falls in the gap and fires when it ends, at midnight of Dec 31 +14:
    # one instant, so one tick. No tick is lost or doubled in UTC.
    midnight = spec("0 0 * * *", "Pacific/Apia")
    ticks = next_ticks(midnight, utc("2011-12-28T12:00:00Z"), 3, "wf/apia")
    assert [t.nominal.isoformat() for t in ticks] == [
        "2011-12-29T10:00:00+00:00",
        "2011-12-30T10:00:00+00:00",
        "2011-12-31T10:00:00+00:00",
    ]
    assert [t.wall_time.day for t in ticks] == [29, 30, 1]


def test_apia_daily_noon_has_no_tick_on_the_missing_day_when_skipping() -> None:
    noon = spec("0 12 * * *", "Pacific/Apia")
    # Noon of Dec 30 (missing) fires at the end of the gap, 00:00 Dec 31 +14.
    assert fires(noon, "2011-12-28T12:00:00Z", 4) == [
        "2011-12-28T22:00:00Z",
        "2011-12-29T22:00:00Z",
        "2011-12-30T10:00:00Z",
        "2011-12-30T22:00:00Z",
    ]
    skipping = spec("0 12 * * *", "Pacific/Apia", skipped=SKIP)
    assert fires(skipping, "2011-12-28T12:00:00Z", 3) == [
        "2011-12-28T22:00:00Z",
        "2011-12-29T22:00:00Z",
        "2011-12-30T22:00:00Z",
    ]


# --- schedules that match every second or minute of a gap -------------------------------------


def test_every_second_across_the_new_york_gap_fires_once_at_its_end() -> None:
    # 3,600 matched wall times in the gap resolve to one instant (or none): each policy gives
    # one tick at 07:00:00Z, matched at 02:00:00 (the gap's first) or 03:00:00 (skipping).
    for skipped, gap_wall in ((GAP_END, "02:00:00"), (SKIP, "03:00:00")):
        every = spec("* * * * * *", "America/New_York", skipped=skipped)
        ticks = next_ticks(every, utc("2024-03-10T06:59:58Z"), 3, "wf/s")
        assert [t.nominal.isoformat() for t in ticks] == [
            "2024-03-10T06:59:59+00:00",
            "2024-03-10T07:00:00+00:00",
            "2024-03-10T07:00:01+00:00",
        ]
        assert [t.wall_time.strftime("%H:%M:%S") for t in ticks] == [
            "01:59:59",
            gap_wall,
            "03:00:01",
        ]


def test_every_minute_across_the_missing_apia_day_fires_once_at_its_end() -> None:
    for skipped, gap_wall in ((GAP_END, "12-30 00:00"), (SKIP, "12-31 00:00")):
        every = spec("* * * * *", "Pacific/Apia", skipped=skipped)
        ticks = next_ticks(every, utc("2011-12-30T09:58:30Z"), 3, "wf/m")
        assert [t.nominal.isoformat() for t in ticks] == [
            "2011-12-30T09:59:00+00:00",
            "2011-12-30T10:00:00+00:00",
            "2011-12-30T10:01:00+00:00",
        ]
        assert [t.wall_time.strftime("%m-%d %H:%M") for t in ticks] == [
            "12-29 23:59",
            gap_wall,
            "12-31 00:01",
        ]
