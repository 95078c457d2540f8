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


def test_overlap_policies_not_run_yet_are_refused_not_ignored() -> None:
    with pytest.raises(ValueError, match="buffer_one"):
        plan_due_ticks(
            EVERY_MINUTE,
            "s",
            utc("2026-01-01T10:00:00Z"),
            utc("2026-01-01T10:00:01Z"),
            policies(overlap=OverlapPolicy.BUFFER_ONE),
            last_run_active=True,
        )


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
