"""Schedules: proto ⇄ domain (requests to `ScheduleConfig`, views to `Schedule` messages)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2
from squidmesh.v1 import schedule_pb2, workflow_pb2
from squidmesh.values import struct_to_dict

from server.api.convert import SCHEDULE_RUN_ORIGIN, struct, timestamp
from server.api.definitions import (
    DEFAULT_TIME_ZONE,
    MISSED_TICK_POLICIES,
    OVERLAP_POLICIES,
    REPEATED_TIME_POLICIES,
    SKIPPED_TIME_POLICIES,
    duration_ms,
    enum_number,
    enum_value,
    to_duration,
)
from server.engine.errors import FieldViolation, InvalidArgument
from server.engine.model import (
    DEFAULT_CATCHUP_WINDOW_MS,
    DEFAULT_MAX_CATCHUP_RUNS,
    MissedTickPolicy,
    OverlapPolicy,
)
from server.engine.schedule import RepeatedTimePolicy, SkippedTimePolicy, Tick
from server.engine.schedule.due_ticks import TickOutcome
from server.engine.schedule_resources import ScheduleHealth, ScheduleView
from server.store.schedules import ScheduleConfig, ScheduleState, TickRecord

STATES: dict[schedule_pb2.ScheduleState.ValueType, ScheduleState] = {
    schedule_pb2.SCHEDULE_STATE_ACTIVE: ScheduleState.ACTIVE,
    schedule_pb2.SCHEDULE_STATE_PAUSED: ScheduleState.PAUSED,
    schedule_pb2.SCHEDULE_STATE_STOPPED: ScheduleState.STOPPED,
}
_OUTCOMES: dict[TickOutcome, schedule_pb2.TickOutcome.ValueType] = {
    TickOutcome.STARTED: schedule_pb2.TICK_OUTCOME_STARTED,
    TickOutcome.SKIPPED_OVERLAP: schedule_pb2.TICK_OUTCOME_SKIPPED_OVERLAP,
    TickOutcome.SKIPPED_MISSED: schedule_pb2.TICK_OUTCOME_SKIPPED_MISSED,
    TickOutcome.FAILED: schedule_pb2.TICK_OUTCOME_FAILED,
    TickOutcome.SKIPPED_PAUSED: schedule_pb2.TICK_OUTCOME_SKIPPED_PAUSED,
}
_HEALTH = {
    ScheduleHealth.OK: schedule_pb2.SCHEDULE_HEALTH_OK,
    ScheduleHealth.OVERDUE: schedule_pb2.SCHEDULE_HEALTH_OVERDUE,
}
_SOURCES = {
    "definition": schedule_pb2.SCHEDULE_SOURCE_DEFINITION,
    "api": schedule_pb2.SCHEDULE_SOURCE_API,
}

# --- proto → domain ----------------------------------------------------------------------------


def config_from_proto(
    schedule_id: str,
    workflow: str,
    trigger: str,
    payload: struct_pb2.Struct,
    spec: schedule_pb2.ScheduleSpec,
    catchup_window: duration_pb2.Duration | None,
    missed_tick_policy: workflow_pb2.MissedTickPolicy.ValueType,
    max_catchup_runs: int,
    overlap_policy: workflow_pb2.OverlapPolicy.ValueType,
    where: str = "",
) -> ScheduleConfig:
    """A schedule's config from a request's fields (`where` prefixes field names, e.g.
    "schedule."); InvalidArgument lists every field that does not convert. The spec's own rules
    (expression, zone, bounds) are the engine's."""
    problems: list[FieldViolation] = []
    config = replace(
        _spec_config(spec, f"{where}spec.", problems),
        id=schedule_id,
        workflow=workflow,
        trigger=trigger,
        payload=struct_to_dict(payload),
        missed_tick_policy=enum_value(
            MISSED_TICK_POLICIES,
            missed_tick_policy,
            MissedTickPolicy.SKIP,
            f"{where}missed_tick_policy",
            problems,
        ),
        catchup_window_ms=(
            duration_ms(catchup_window, f"{where}catchup_window", problems)
            if catchup_window is not None
            else DEFAULT_CATCHUP_WINDOW_MS
        ),
        max_catchup_runs=max_catchup_runs or DEFAULT_MAX_CATCHUP_RUNS,
        overlap_policy=enum_value(
            OVERLAP_POLICIES,
            overlap_policy,
            OverlapPolicy.SKIP,
            f"{where}overlap_policy",
            problems,
        ),
    )
    if problems:
        raise InvalidArgument("invalid schedule", problems)
    return config


def spec_from_proto(spec: schedule_pb2.ScheduleSpec) -> ScheduleConfig:
    """A bare spec (PreviewSchedule) as a config that holds only it."""
    problems: list[FieldViolation] = []
    config = _spec_config(spec, "spec.", problems)
    if problems:
        raise InvalidArgument("invalid schedule spec", problems)
    return config


def _spec_config(
    spec: schedule_pb2.ScheduleSpec, where: str, problems: list[FieldViolation]
) -> ScheduleConfig:
    """A config of the spec, its other fields at their defaults."""
    return ScheduleConfig(
        id="",
        workflow="",
        trigger="",
        payload={},
        cron_expression=spec.cron_expression.strip(),
        time_zone=spec.time_zone or DEFAULT_TIME_ZONE,
        start_at=instant(spec.start_time, spec.HasField("start_time")),
        end_at=instant(spec.end_time, spec.HasField("end_time")),
        jitter_ms=(
            duration_ms(spec.jitter, f"{where}jitter", problems) if spec.HasField("jitter") else 0
        ),
        skipped_time_policy=enum_value(
            SKIPPED_TIME_POLICIES,
            spec.skipped_time_policy,
            SkippedTimePolicy.RUN_AT_GAP_END,
            f"{where}skipped_time_policy",
            problems,
        ),
        repeated_time_policy=enum_value(
            REPEATED_TIME_POLICIES,
            spec.repeated_time_policy,
            RepeatedTimePolicy.FIRST,
            f"{where}repeated_time_policy",
            problems,
        ),
        catchup_window_ms=DEFAULT_CATCHUP_WINDOW_MS,
        missed_tick_policy=MissedTickPolicy.SKIP,
        max_catchup_runs=DEFAULT_MAX_CATCHUP_RUNS,
        overlap_policy=OverlapPolicy.SKIP,
    )


def instant(ts: timestamp_pb2.Timestamp, present: bool) -> datetime | None:
    return ts.ToDatetime(tzinfo=UTC) if present else None


def states_from_proto(numbers: list[int], where: str) -> list[ScheduleState]:
    unknown = [n for n in numbers if n not in STATES]
    if unknown:
        raise InvalidArgument(
            "unknown schedule state",
            [FieldViolation(where, f"unknown value {n}") for n in unknown],
        )
    return [STATES[n] for n in numbers]  # type: ignore[index]


# --- domain → proto ----------------------------------------------------------------------------


def schedule(view: ScheduleView) -> schedule_pb2.Schedule:
    stored = view.stored
    config = stored.config
    state = next(number for number, s in STATES.items() if s is stored.state)
    return schedule_pb2.Schedule(
        id=config.id,
        workflow=config.workflow,
        trigger=config.trigger,
        payload=struct(config.payload),
        spec=schedule_pb2.ScheduleSpec(
            cron_expression=config.cron_expression,
            time_zone=config.time_zone,
            start_time=timestamp(config.start_at),
            end_time=timestamp(config.end_at),
            jitter=to_duration(config.jitter_ms or None),
            skipped_time_policy=enum_number(SKIPPED_TIME_POLICIES, config.skipped_time_policy),
            repeated_time_policy=enum_number(REPEATED_TIME_POLICIES, config.repeated_time_policy),
        ),
        catchup_window=to_duration(config.catchup_window_ms),
        missed_tick_policy=enum_number(MISSED_TICK_POLICIES, config.missed_tick_policy),
        max_catchup_runs=config.max_catchup_runs,
        overlap_policy=enum_number(OVERLAP_POLICIES, config.overlap_policy),
        state=state,
        pause_note=stored.pause_note,
        paused_by=stored.paused_by,
        etag=str(stored.revision),
        source=_SOURCES[stored.origin],
        create_time=timestamp(stored.created_at),
        update_time=timestamp(stored.updated_at),
        next_ticks=[next_tick(t) for t in view.next_ticks],
        recent_ticks=[decided_tick(t) for t in view.recent_ticks],
        health=_HEALTH[view.health],
        buffered_tick=next_tick(view.buffered) if view.buffered else None,
    )


def next_tick(tick: Tick) -> schedule_pb2.Tick:
    return schedule_pb2.Tick(
        nominal_time=timestamp(tick.nominal), fire_time=timestamp(tick.fire_at)
    )


def decided_tick(tick: TickRecord) -> schedule_pb2.Tick:
    return schedule_pb2.Tick(
        nominal_time=timestamp(tick.nominal_at),
        fire_time=timestamp(tick.fired_at),
        run_id=str(tick.run_id) if tick.run_id else "",
        outcome=_OUTCOMES[tick.outcome],
        reason=tick.reason,
        origin=SCHEDULE_RUN_ORIGIN[tick.origin],
    )
