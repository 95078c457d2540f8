"""Shared helper for the schedule-engine tests: fire instants as literal UTC ISO strings."""

from __future__ import annotations

from datetime import datetime, timedelta

from server.engine.schedule import (
    RepeatedTimePolicy,
    ScheduleSpec,
    SkippedTimePolicy,
    next_ticks,
    parse_cron,
    parse_time_zone,
)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def iso(instant: datetime) -> str:
    return instant.strftime("%Y-%m-%dT%H:%M:%SZ")


def spec(
    expression: str,
    time_zone: str = "",
    *,
    start: str | None = None,
    end: str | None = None,
    jitter: timedelta = timedelta(0),
    skipped: SkippedTimePolicy = SkippedTimePolicy.RUN_AT_GAP_END,
    repeated: RepeatedTimePolicy = RepeatedTimePolicy.FIRST,
) -> ScheduleSpec:
    return ScheduleSpec(
        parse_cron(expression),
        parse_time_zone(time_zone),
        start=None if start is None else utc(start),
        end=None if end is None else utc(end),
        jitter=jitter,
        skipped_time=skipped,
        repeated_time=repeated,
    )


def fires(schedule: ScheduleSpec, after: str, count: int) -> list[str]:
    return [iso(t.nominal) for t in next_ticks(schedule, utc(after), count, "wf/nightly")]
