"""Readable text of schedules: `schedules list` (one row each), `schedules get` (spec, policies,
state, health, next and recent ticks) and the ticks of `preview` and `backfill`. A schedule's
times are shown in its own time zone, where its cron expression is read, and in UTC where an
instant must be exact (a tick's fire time); "in 3m 04s" says how far off a tick is."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from google.protobuf import duration_pb2, timestamp_pb2

from squidmesh.cli.diagnosis_text import relative
from squidmesh.cli.output import Table
from squidmesh.cli.text import _compact, _time, duration, enum_name
from squidmesh.v1 import run_pb2, schedule_pb2, workflow_pb2
from squidmesh.values import struct_to_dict

_STATE_STYLES = {"active": "green", "paused": "magenta", "stopped": "dim"}
_OUTCOME_STYLES = {
    "started": "green",
    "skipped_overlap": "yellow",
    "skipped_missed": "yellow",
    "skipped_paused": "magenta",
    "failed": "red",
}
_SOURCES = {
    "definition": "a cron trigger of its workflow: register a new version to change it",
    "api": "created through ScheduleService",
}
_SKIPPED = {
    "run_at_gap_end": "fires at the end of the gap",
    "skip": "does not fire",
}
_REPEATED = {"first": "fires at its first occurrence", "last": "fires at its last occurrence"}


def zone(time_zone: str) -> tuple[str, tzinfo]:
    """The name and rules of a spec's zone (empty: UTC); UTC when this machine's tz data lacks
    the zone (the spec line still names it)."""
    try:
        return (time_zone, ZoneInfo(time_zone)) if time_zone else ("UTC", UTC)
    except (ZoneInfoNotFoundError, ValueError):
        return "UTC", UTC


def zoned(ts: timestamp_pb2.Timestamp, where: tzinfo) -> str:
    """ "2026-11-22 03:00:00 CET": the instant in a zone, named by its abbreviation."""
    if not ts.seconds and not ts.nanos:
        return "-"
    return f"{ts.ToDatetime(tzinfo=where):%Y-%m-%d %H:%M:%S %Z}"


def state(schedule: schedule_pb2.Schedule) -> tuple[str, str]:
    name = enum_name(schedule_pb2.ScheduleState, schedule.state, "SCHEDULE_STATE_")
    return (name, _STATE_STYLES.get(name, ""))


def health(schedule: schedule_pb2.Schedule) -> tuple[str, str]:
    """ "ok", or "OVERDUE" in bold red: a tick is due and has not fired."""
    name = enum_name(schedule_pb2.ScheduleHealth, schedule.health, "SCHEDULE_HEALTH_")
    if schedule.health == schedule_pb2.SCHEDULE_HEALTH_OVERDUE:
        return (name.upper(), "bold red")
    return (name, "green" if schedule.health == schedule_pb2.SCHEDULE_HEALTH_OK else "")


def _next_fire(schedule: schedule_pb2.Schedule, now: datetime) -> str:
    if not schedule.next_ticks:
        return "-"
    fire = schedule.next_ticks[0].fire_time
    return f"{zoned(fire, zone(schedule.spec.time_zone)[1])} ({relative(fire, now)})"


def schedules_table(schedules: Iterable[schedule_pb2.Schedule], now: datetime) -> Table:
    table = Table(["SCHEDULE", "WORKFLOW", "CRON", "ZONE", "STATE", "HEALTH", "NEXT TICK"])
    for schedule in schedules:
        table.add(
            schedule.id,
            f"{schedule.workflow} ({schedule.trigger})" if schedule.trigger else schedule.workflow,
            schedule.spec.cron_expression,
            schedule.spec.time_zone or "UTC",
            state(schedule),
            health(schedule),
            _next_fire(schedule, now),
        )
    return table


def schedule_summary(schedule: schedule_pb2.Schedule, now: datetime) -> tuple[str, str]:
    """One line about a schedule (its id, spec, state and next tick), and its style."""
    name, style = state(schedule)
    line = f"{schedule.id}  {_spec_line(schedule.spec)}  {name}"
    if schedule.state == schedule_pb2.SCHEDULE_STATE_PAUSED:
        line += _paused(schedule)
    elif schedule.next_ticks:
        line += f", next tick {_next_fire(schedule, now)}"
    return line, style


def _spec_line(spec: schedule_pb2.ScheduleSpec) -> str:
    return f"{spec.cron_expression} in {spec.time_zone or 'UTC'}"


def _paused(schedule: schedule_pb2.Schedule) -> str:
    by = f" by {schedule.paused_by}" if schedule.paused_by else ""
    note = f": {schedule.pause_note}" if schedule.pause_note else ""
    return by + note


def _seconds(d: duration_pb2.Duration) -> str:
    return duration(d.ToNanoseconds() / 1e9)


def schedule_lines(schedule: schedule_pb2.Schedule, now: datetime) -> list[tuple[str, str]]:
    """The schedule as (line, style) pairs: what it starts, its spec and policies, its state
    (who paused it and why) and health (OVERDUE: how long a tick has been due)."""
    spec, (_, where) = schedule.spec, zone(schedule.spec.time_zone)
    source = enum_name(schedule_pb2.ScheduleSource, schedule.source, "SCHEDULE_SOURCE_")
    trigger = f" (trigger {schedule.trigger})" if schedule.trigger else ""
    lines = [
        (f"schedule      {schedule.id}", "bold"),
        (f"source        {_SOURCES.get(source, source)}", ""),
        (f"workflow      {schedule.workflow}{trigger}", ""),
        (f"payload       {_compact(struct_to_dict(schedule.payload))}", ""),
        (f"spec          {_spec_line(spec)}", ""),
    ]
    bounds = []
    if spec.HasField("start_time"):
        bounds.append(f"from {zoned(spec.start_time, where)}")
    if spec.HasField("end_time"):
        bounds.append(f"until {zoned(spec.end_time, where)}")
    if spec.HasField("jitter") and spec.jitter.ToNanoseconds():
        bounds.append(f"each tick up to {_seconds(spec.jitter)} late (jitter)")
    if bounds:
        lines.append((f"              {', '.join(bounds)}", ""))
    lines.append((f"dst           {_dst(spec)}", ""))
    lines += _policy_lines(schedule)
    name, style = state(schedule)
    lines.append((f"state         {name}{_paused(schedule)}", style))
    lines.append(_health_line(schedule, now))
    lines.append((f"created       {_time(schedule.create_time)}", ""))
    lines.append((f"updated       {_time(schedule.update_time)}", ""))
    if schedule.etag:
        lines.append((f"etag          {schedule.etag}", "dim"))
    return lines


def _option(enum: Any, number: int, prefix: str, default: str) -> str:
    """The short name of a spec's or a policy's value; unspecified: the server's default."""
    return enum_name(enum, number, prefix) if number else default


def _dst(spec: schedule_pb2.ScheduleSpec) -> str:
    """What a tick does in the hour a clock change skips or repeats."""
    skipped = _option(
        workflow_pb2.SkippedTimePolicy,
        spec.skipped_time_policy,
        "SKIPPED_TIME_POLICY_",
        "run_at_gap_end",
    )
    repeated = _option(
        workflow_pb2.RepeatedTimePolicy, spec.repeated_time_policy, "REPEATED_TIME_POLICY_", "first"
    )
    return (
        f"a tick at a skipped local time {_SKIPPED.get(skipped, skipped)}, "
        f"one at a repeated local time {_REPEATED.get(repeated, repeated)}"
    )


def _policy_lines(schedule: schedule_pb2.Schedule) -> list[tuple[str, str]]:
    missed = _option(
        workflow_pb2.MissedTickPolicy, schedule.missed_tick_policy, "MISSED_TICK_POLICY_", "skip"
    )
    if missed == "run_all" and schedule.max_catchup_runs:
        missed += f" (at most {schedule.max_catchup_runs} runs)"
    if schedule.HasField("catchup_window"):
        missed += f", within a catch-up window of {_seconds(schedule.catchup_window)}"
    overlap = _option(
        workflow_pb2.OverlapPolicy, schedule.overlap_policy, "OVERLAP_POLICY_", "skip"
    )
    return [(f"missed ticks  {missed}", ""), (f"overlap       {overlap}", "")]


def _health_line(schedule: schedule_pb2.Schedule, now: datetime) -> tuple[str, str]:
    text, style = health(schedule)
    if schedule.health == schedule_pb2.SCHEDULE_HEALTH_OVERDUE:
        due = ""
        if schedule.next_ticks:
            due = f" the tick due {relative(schedule.next_ticks[0].fire_time, now)}"
        text += f":{due} has not fired: no server's timer loop is running, or it is behind"
    return f"health        {text}", style


def next_ticks_table(ticks: Iterable[schedule_pb2.Tick], time_zone: str, now: datetime) -> Table:
    """Ticks to come: nominal and fire times in the schedule's zone and in UTC (once when the
    zone is UTC), and how far off each is."""
    name, where = zone(time_zone)
    zones = [(name, where)] if name == "UTC" else [(name, where), ("UTC", UTC)]
    table = Table(
        [f"NOMINAL ({n})" for n, _ in zones] + [f"FIRES ({n})" for n, _ in zones] + ["IN"]
    )
    for tick in ticks:
        table.add(
            *(zoned(tick.nominal_time, z) for _, z in zones),
            *(zoned(tick.fire_time, z) for _, z in zones),
            relative(tick.fire_time, now),
        )
    return table


def ticks_table(ticks: Iterable[schedule_pb2.Tick], time_zone: str) -> Table:
    """Decided ticks: nominal and fire times in the schedule's zone, how each was decided
    (tick, manual, backfill), what it did, its run, and why it started none."""
    name, where = zone(time_zone)
    table = Table([f"NOMINAL ({name})", "FIRED", "ORIGIN", "OUTCOME", "RUN", "REASON"])
    for tick in ticks:
        outcome = enum_name(schedule_pb2.TickOutcome, tick.outcome, "TICK_OUTCOME_")
        table.add(
            zoned(tick.nominal_time, where),
            zoned(tick.fire_time, where),
            enum_name(run_pb2.ScheduleRunOrigin, tick.origin, "SCHEDULE_RUN_ORIGIN_"),
            (outcome, _OUTCOME_STYLES.get(outcome, "")),
            tick.run_id or "-",
            tick.reason,
        )
    return table
