"""Which due ticks start runs: lateness, catch-up window, missed-tick and overlap policies, and
the run id a tick names. Pure: instants are written out, no clock."""

from __future__ import annotations

import uuid
from datetime import timedelta
from zoneinfo import ZoneInfo

import pytest

from server.engine.model import MissedTickPolicy, OverlapPolicy
from server.engine.schedule.due_ticks import (
    MAX_TICKS_PER_PLAN,
    DuePlan,
    TickOutcome,
    TickPolicies,
    plan_due_ticks,
)
from server.engine.schedule_commands import SCHEDULE_TICK_NAMESPACE, tick_run_id
from tests.unit.cron_helpers import iso, spec, utc

EVERY_MINUTE = spec("* * * * *")


def policies(
    missed: MissedTickPolicy = MissedTickPolicy.SKIP,
    *,
    window: timedelta = timedelta(hours=1),
    max_runs: int = 10,
    overlap: OverlapPolicy = OverlapPolicy.SKIP,
) -> TickPolicies:
    return TickPolicies(window, missed, max_runs, overlap)


def outcomes(plan: DuePlan) -> list[tuple[str, TickOutcome]]:
    return [(iso(d.tick.nominal), d.outcome) for d in plan.decisions]


def test_an_on_time_tick_starts_and_the_next_is_kept() -> None:
    plan = plan_due_ticks(
        EVERY_MINUTE,
        "s",
        utc("2026-01-01T10:00:00Z"),
        utc("2026-01-01T10:00:00.300Z"),
        policies(),
        last_run_active=False,
    )
    assert outcomes(plan) == [("2026-01-01T10:00:00Z", TickOutcome.STARTED)]
    assert plan.next_tick is not None and iso(plan.next_tick.nominal) == "2026-01-01T10:01:00Z"


def test_nothing_due_decides_nothing() -> None:
    plan = plan_due_ticks(
        EVERY_MINUTE,
        "s",
        utc("2026-01-01T10:00:00Z"),
        utc("2026-01-01T09:59:59Z"),
        policies(),
        last_run_active=False,
    )
    assert plan.decisions == []
    assert plan.next_tick is not None and iso(plan.next_tick.nominal) == "2026-01-01T10:00:00Z"


# Down from 09:55 to 10:00:30: the 09:55..10:00 ticks (six) were missed.
DOWN_FROM, BACK_AT = utc("2026-01-01T09:55:00Z"), utc("2026-01-01T10:00:30Z")
MISSED = [f"2026-01-01T09:5{m}:00Z" for m in range(5, 10)] + ["2026-01-01T10:00:00Z"]


@pytest.mark.parametrize(
    ("policy", "max_runs", "started"),
    [
        (MissedTickPolicy.SKIP, 10, []),
        (MissedTickPolicy.RUN_LATEST, 10, MISSED[-1:]),
        (MissedTickPolicy.RUN_ALL, 10, MISSED),
        (MissedTickPolicy.RUN_ALL, 2, MISSED[-2:]),
    ],
)
def test_missed_ticks_follow_the_policy_and_every_one_is_decided(
    policy: MissedTickPolicy, max_runs: int, started: list[str]
) -> None:
    plan = plan_due_ticks(
        EVERY_MINUTE,
        "s",
        DOWN_FROM,
        BACK_AT,
        policies(policy, max_runs=max_runs),
        last_run_active=False,
    )
    assert [nominal for nominal, _ in outcomes(plan)] == MISSED
    assert [n for n, outcome in outcomes(plan) if outcome is TickOutcome.STARTED] == started
    skipped = [d for d in plan.decisions if d.outcome is TickOutcome.SKIPPED_MISSED]
    assert len(skipped) == len(MISSED) - len(started)
    assert all("missed while no server ran" in d.reason for d in skipped)
    assert plan.next_tick is not None and iso(plan.next_tick.nominal) == "2026-01-01T10:01:00Z"


def test_ticks_older_than_the_catch_up_window_are_one_decision() -> None:
    # Down for a day with a one-hour window: one row stands for the 23 hours before it.
    plan = plan_due_ticks(
        EVERY_MINUTE,
        "s",
        utc("2026-01-01T00:00:00Z"),
        utc("2026-01-02T00:00:30Z"),
        policies(MissedTickPolicy.RUN_ALL, window=timedelta(hours=1), max_runs=2),
        last_run_active=False,
    )
    first = plan.decisions[0]
    assert iso(first.tick.nominal) == "2026-01-01T00:00:00Z"
    assert first.outcome is TickOutcome.SKIPPED_MISSED
    assert "older than the catch-up window" in first.reason
    # Then the window's ticks one by one, from 23:01 (23:00:30 is the window's start).
    assert iso(plan.decisions[1].tick.nominal) == "2026-01-01T23:01:00Z"
    assert len(plan.decisions) == 1 + 60
    assert [n for n, o in outcomes(plan) if o is TickOutcome.STARTED] == [
        "2026-01-01T23:59:00Z",
        "2026-01-02T00:00:00Z",
    ]


def test_a_long_backlog_is_decided_in_slices() -> None:
    every_second = spec("* * * * * *")
    plan = plan_due_ticks(
        every_second,
        "s",
        utc("2026-01-01T00:00:00Z"),
        utc("2026-01-01T00:59:00Z"),
        policies(),
        last_run_active=False,
    )
    assert len(plan.decisions) == MAX_TICKS_PER_PLAN
    assert plan.next_tick is not None
    assert plan.next_tick.nominal == plan.decisions[-1].tick.nominal + timedelta(seconds=1)


@pytest.mark.parametrize(
    ("overlap", "active", "outcome"),
    [
        (OverlapPolicy.SKIP, True, TickOutcome.SKIPPED_OVERLAP),
        (OverlapPolicy.SKIP, False, TickOutcome.STARTED),
        (OverlapPolicy.ALLOW_ALL, True, TickOutcome.STARTED),
    ],
)
def test_overlap_with_the_last_run(
    overlap: OverlapPolicy, active: bool, outcome: TickOutcome
) -> None:
    plan = plan_due_ticks(
        EVERY_MINUTE,
        "s",
        utc("2026-01-01T10:00:00Z"),
        utc("2026-01-01T10:00:01Z"),
        policies(overlap=overlap),
        last_run_active=active,
    )
    assert outcomes(plan) == [("2026-01-01T10:00:00Z", outcome)]
    if outcome is TickOutcome.SKIPPED_OVERLAP:
        assert "still active" in plan.decisions[0].reason


def test_buffer_one_holds_the_first_overlapping_tick_and_skips_the_rest() -> None:
    plan = plan_due_ticks(
        EVERY_MINUTE,
        "s",
        utc("2026-01-01T10:00:00Z"),
        utc("2026-01-01T10:00:01Z"),
        policies(overlap=OverlapPolicy.BUFFER_ONE),
        last_run_active=True,
    )
    assert plan.decisions == []  # held: decided (and recorded) when it starts
    assert plan.buffered is not None and iso(plan.buffered.nominal) == "2026-01-01T10:00:00Z"
    later = plan_due_ticks(
        EVERY_MINUTE,
        "s",
        utc("2026-01-01T10:01:00Z"),
        utc("2026-01-01T10:01:01Z"),
        policies(overlap=OverlapPolicy.BUFFER_ONE),
        last_run_active=True,
        buffered=plan.buffered,
    )
    assert outcomes(later) == [("2026-01-01T10:01:00Z", TickOutcome.SKIPPED_OVERLAP)]
    assert "already buffered" in later.decisions[0].reason
    assert later.buffered == plan.buffered


def test_a_buffered_tick_starts_once_the_run_has_ended_before_the_due_ones() -> None:
    held = plan_due_ticks(
        EVERY_MINUTE,
        "s",
        utc("2026-01-01T10:00:00Z"),
        utc("2026-01-01T10:00:01Z"),
        policies(overlap=OverlapPolicy.BUFFER_ONE),
        last_run_active=True,
    ).buffered
    # The run ended between ticks: nothing due, the held tick starts alone.
    released = plan_due_ticks(
        EVERY_MINUTE,
        "s",
        utc("2026-01-01T10:01:00Z"),
        utc("2026-01-01T10:00:30Z"),
        policies(overlap=OverlapPolicy.BUFFER_ONE),
        last_run_active=False,
        buffered=held,
    )
    assert outcomes(released) == [("2026-01-01T10:00:00Z", TickOutcome.STARTED)]
    assert released.buffered is None
    # It ended just as the next tick fell due: the held tick starts, the due one is held.
    both = plan_due_ticks(
        EVERY_MINUTE,
        "s",
        utc("2026-01-01T10:01:00Z"),
        utc("2026-01-01T10:01:01Z"),
        policies(overlap=OverlapPolicy.BUFFER_ONE),
        last_run_active=False,
        buffered=held,
    )
    assert outcomes(both) == [("2026-01-01T10:00:00Z", TickOutcome.STARTED)]
    assert both.buffered is not None and iso(both.buffered.nominal) == "2026-01-01T10:01:00Z"
    # A stopped schedule (no next tick) still starts its held tick.
    alone = plan_due_ticks(
        EVERY_MINUTE,
        "s",
        None,
        utc("2026-01-01T10:01:01Z"),
        policies(overlap=OverlapPolicy.BUFFER_ONE),
        last_run_active=False,
        buffered=held,
    )
    assert outcomes(alone) == [("2026-01-01T10:00:00Z", TickOutcome.STARTED)]
    assert alone.next_tick is None


def test_cancel_other_starts_the_tick_and_cancels_the_active_run() -> None:
    plan = plan_due_ticks(
        EVERY_MINUTE,
        "s",
        utc("2026-01-01T10:00:00Z"),
        utc("2026-01-01T10:00:01Z"),
        policies(overlap=OverlapPolicy.CANCEL_OTHER),
        last_run_active=True,
    )
    assert outcomes(plan) == [("2026-01-01T10:00:00Z", TickOutcome.STARTED)]
    assert plan.decisions[0].cancels_last_run
    idle = plan_due_ticks(
        EVERY_MINUTE,
        "s",
        utc("2026-01-01T10:00:00Z"),
        utc("2026-01-01T10:00:01Z"),
        policies(overlap=OverlapPolicy.CANCEL_OTHER),
        last_run_active=False,
    )
    assert not idle.decisions[0].cancels_last_run


def test_ticks_decided_together_do_not_skip_one_another() -> None:
    plan = plan_due_ticks(
        EVERY_MINUTE,
        "s",
        utc("2026-01-01T10:00:00Z"),
        utc("2026-01-01T10:02:30Z"),
        policies(MissedTickPolicy.RUN_ALL),
        last_run_active=False,
    )
    assert [o for _, o in outcomes(plan)] == [TickOutcome.STARTED] * 3


def test_a_jittered_tick_is_due_at_its_fire_time() -> None:
    jittered = spec("* * * * *", jitter=timedelta(seconds=50))
    first = plan_due_ticks(
        jittered,
        "s",
        utc("2026-01-01T10:00:00Z"),
        utc("2026-01-01T10:00:00Z"),
        policies(),
        last_run_active=False,
    )
    assert first.decisions == [] and first.next_tick is not None
    fire_at = first.next_tick.fire_at
    assert utc("2026-01-01T10:00:00Z") < fire_at < utc("2026-01-01T10:00:50Z")
    plan = plan_due_ticks(
        jittered, "s", utc("2026-01-01T10:00:00Z"), fire_at, policies(), last_run_active=False
    )
    assert outcomes(plan) == [("2026-01-01T10:00:00Z", TickOutcome.STARTED)]


def test_a_ticks_run_id_is_predictable() -> None:
    nominal = utc("2026-01-01T10:00:00Z")
    expected = uuid.uuid5(SCHEDULE_TICK_NAMESPACE, "report/nightly\n2026-01-01T10:00:00Z")
    assert tick_run_id("report/nightly", nominal) == expected
    assert tick_run_id("report/nightly", nominal.astimezone(ZoneInfo("Asia/Tokyo"))) == (expected)
    assert tick_run_id("report/other", nominal) != expected
