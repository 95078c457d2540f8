"""A schedule's view: next ticks only while active, and OVERDUE when a due tick has not fired
past the on-time grace (every server's timer loop down or behind). Pure: instants written out."""

from __future__ import annotations

from datetime import datetime, timedelta

from server.engine.model import MissedTickPolicy, OverlapPolicy
from server.engine.schedule import RepeatedTimePolicy, SkippedTimePolicy
from server.engine.schedule.due_ticks import ON_TIME_GRACE
from server.engine.schedule_resources import ScheduleHealth, schedule_view
from server.store.schedules import ScheduleConfig, ScheduleState, StoredSchedule
from tests.unit.cron_helpers import iso, utc

NEXT = utc("2026-01-01T10:00:00Z")


def stored(
    state: ScheduleState = ScheduleState.ACTIVE, due: datetime | None = NEXT
) -> StoredSchedule:
    config = ScheduleConfig(
        id="nightly",
        workflow="report",
        trigger="manual",
        payload={},
        cron_expression="0 * * * *",
        time_zone="UTC",
        start_at=None,
        end_at=None,
        jitter_ms=0,
        skipped_time_policy=SkippedTimePolicy.RUN_AT_GAP_END,
        repeated_time_policy=RepeatedTimePolicy.FIRST,
        catchup_window_ms=3_600_000,
        missed_tick_policy=MissedTickPolicy.SKIP,
        max_catchup_runs=10,
        overlap_policy=OverlapPolicy.SKIP,
    )
    return StoredSchedule(
        config, state, "", "", "api", 1, due, due, None, NEXT - timedelta(days=1), NEXT
    )


def test_a_due_tick_not_fired_past_the_grace_is_overdue() -> None:
    on_time = schedule_view(stored(), NEXT + ON_TIME_GRACE, [])
    assert on_time.health is ScheduleHealth.OK
    late = schedule_view(stored(), NEXT + ON_TIME_GRACE + timedelta(seconds=1), [])
    assert late.health is ScheduleHealth.OVERDUE
    assert [iso(t.nominal) for t in late.next_ticks][:2] == [
        "2026-01-01T10:00:00Z",
        "2026-01-01T11:00:00Z",
    ]


def test_a_paused_or_ended_schedule_is_never_overdue_and_has_no_next_ticks() -> None:
    later = NEXT + timedelta(hours=5)
    paused = schedule_view(stored(ScheduleState.PAUSED), later, [])
    assert (paused.health, paused.next_ticks) == (ScheduleHealth.OK, [])
    ended = schedule_view(stored(due=None), later, [])
    assert (ended.health, ended.next_ticks) == (ScheduleHealth.OK, [])
