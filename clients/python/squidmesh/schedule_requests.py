"""The requests of the schedule calls of the clients (`Client`, `AsyncClient`), built and checked
before any call as in `squidmesh.requests`, and the options a schedule shares with a workflow's
cron trigger: its spec (`schedule_spec`) and its policies. The SDK's `Workflow.trigger` builds
its `CronTrigger` from the same functions, so both take the same names and refuse the same
values with the same errors."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Literal, TypeVar

from google.protobuf import field_mask_pb2, timestamp_pb2

from squidmesh.requests import (
    DurationLike,
    _duration,
    _each,
    _enum_value,
    _required,
    _timestamp,
)
from squidmesh.v1 import schedule_pb2, schedule_service_pb2, workflow_pb2
from squidmesh.values import to_struct

__all__ = [
    "SCHEDULE_UPDATE_FIELDS",
    "MissedTicksName",
    "OverlapName",
    "RepeatedTimeName",
    "ScheduleStateLike",
    "SkippedTimeName",
    "schedule_spec",
    "schedule_state",
]

MissedTicksName = Literal["skip", "run_latest", "run_all"]
"""What a schedule does with ticks missed while no server ran (`MissedTickPolicy`)."""
OverlapName = Literal["skip", "buffer_one", "allow_all", "cancel_other"]
"""What a tick does while the schedule's previous run is still active (`OverlapPolicy`)."""
SkippedTimeName = Literal["run_at_gap_end", "skip"]
"""A tick whose local time does not exist (spring forward) (`SkippedTimePolicy`)."""
RepeatedTimeName = Literal["first", "last"]
"""A tick whose local time occurs twice (fall back) (`RepeatedTimePolicy`)."""
ScheduleStateLike = str | int
"""A schedule state: its enum value or its short name ("active", "paused", "stopped")."""

SCHEDULE_UPDATE_FIELDS = (
    "payload",
    "spec",
    "catchup_window",
    "missed_tick_policy",
    "max_catchup_runs",
    "overlap_policy",
    "trigger",
)
"""The fields UpdateSchedule changes (its update mask names some of them; none: all)."""
MAX_PREVIEW = 100  # PreviewSchedule's limit
PauseOrResume = TypeVar(
    "PauseOrResume",
    schedule_service_pb2.PauseScheduleRequest,
    schedule_service_pb2.ResumeScheduleRequest,
)


def schedule_state(state: ScheduleStateLike) -> schedule_pb2.ScheduleState.ValueType:
    """ "paused" (or "SCHEDULE_STATE_PAUSED", or the number) -> SCHEDULE_STATE_PAUSED."""
    return schedule_pb2.ScheduleState.ValueType(
        _enum_value(schedule_pb2.ScheduleState, "SCHEDULE_STATE_", "state", state)
    )


def schedule_spec(
    cron: str,
    *,
    time_zone: str = "",
    start_time: datetime | None = None,
    end_time: datetime | None = None,
    jitter: DurationLike | None = None,
    skipped_time: SkippedTimeName | None = None,
    repeated_time: RepeatedTimeName | None = None,
) -> schedule_pb2.ScheduleSpec:
    """When a schedule ticks: a cron expression ("0 3 * * *", six fields with seconds first,
    or "@hourly"...) in an IANA `time_zone` (empty: UTC), no tick before `start_time` or after
    `end_time` (inclusive; timezone-aware datetimes), each tick up to `jitter` late (seconds or a
    timedelta), and what a tick in a skipped hour ("run_at_gap_end", the default, or "skip")
    or in a repeated hour ("first", the default, or "last") does."""
    return schedule_pb2.ScheduleSpec(
        cron_expression=cron_expression(cron),
        **spec_fields(
            time_zone=time_zone,
            start_time=start_time,
            end_time=end_time,
            jitter=jitter,
            skipped_time=skipped_time,
            repeated_time=repeated_time,
        ),
    )


def cron_expression(cron: str) -> str:
    if not isinstance(cron, str):
        raise TypeError(f"a cron expression is a string, not {type(cron).__name__}")
    if not cron.strip():
        raise ValueError("empty cron expression")
    return cron


def spec_fields(
    *,
    time_zone: str,
    start_time: datetime | None,
    end_time: datetime | None,
    jitter: DurationLike | None,
    skipped_time: SkippedTimeName | None,
    repeated_time: RepeatedTimeName | None,
) -> dict[str, Any]:
    """The fields a `ScheduleSpec` and a `CronTrigger` share (all but the expression, which
    they name differently), checked: keyword arguments of either message."""
    if not isinstance(time_zone, str):
        raise TypeError(f"time_zone must be a string, not {type(time_zone).__name__}")
    start, end = _instant("start_time", start_time), _instant("end_time", end_time)
    if start is not None and end is not None and end.ToNanoseconds() < start.ToNanoseconds():
        raise ValueError("end_time is before start_time")
    fields: dict[str, Any] = {
        "time_zone": time_zone,
        "start_time": start,
        "end_time": end,
        "jitter": _duration("jitter", jitter),
    }
    if skipped_time is not None:
        fields["skipped_time_policy"] = _enum_value(
            workflow_pb2.SkippedTimePolicy, "SKIPPED_TIME_POLICY_", "skipped_time", skipped_time
        )
    if repeated_time is not None:
        fields["repeated_time_policy"] = _enum_value(
            workflow_pb2.RepeatedTimePolicy, "REPEATED_TIME_POLICY_", "repeated_time", repeated_time
        )
    return fields


def policy_fields(
    *,
    catchup_window: DurationLike | None,
    missed_ticks: MissedTicksName | None,
    max_catchup_runs: int,
    overlap: OverlapName | None,
) -> dict[str, Any]:
    """The policy fields a schedule (`CreateScheduleRequest`, `Schedule`) and a `CronTrigger`
    share, checked: keyword arguments of any of them. `max_catchup_runs` (0: the server's
    default, 10) goes with missed_ticks="run_all" only: no other policy reads it."""
    if isinstance(max_catchup_runs, bool) or not isinstance(max_catchup_runs, int):
        raise TypeError(f"max_catchup_runs must be a whole number, not {max_catchup_runs!r}")
    if max_catchup_runs < 0:
        raise ValueError(f"max_catchup_runs must be 0 or more, got {max_catchup_runs}")
    fields: dict[str, Any] = {
        "catchup_window": _duration("catchup_window", catchup_window),
        "max_catchup_runs": max_catchup_runs,
    }
    if missed_ticks is not None:
        fields["missed_tick_policy"] = _enum_value(
            workflow_pb2.MissedTickPolicy, "MISSED_TICK_POLICY_", "missed_ticks", missed_ticks
        )
    if (
        max_catchup_runs
        and fields.get("missed_tick_policy") != workflow_pb2.MISSED_TICK_POLICY_RUN_ALL
    ):
        raise ValueError("max_catchup_runs goes with missed_ticks='run_all'")
    if overlap is not None:
        fields["overlap_policy"] = _enum_value(
            workflow_pb2.OverlapPolicy, "OVERLAP_POLICY_", "overlap", overlap
        )
    return fields


def _instant(name: str, when: datetime | None) -> timestamp_pb2.Timestamp | None:
    """A bound of a spec: a naive datetime is refused (stored on the server, its meaning must
    not depend on the zone of the machine that sent it)."""
    if isinstance(when, datetime) and when.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, e.g. datetime(..., tzinfo=UTC)")
    return _timestamp(name, when)


def _spec(spec: str | schedule_pb2.ScheduleSpec) -> schedule_pb2.ScheduleSpec:
    """A spec message, or a bare cron expression (evaluated in UTC)."""
    if isinstance(spec, schedule_pb2.ScheduleSpec):
        return spec
    if isinstance(spec, str):
        return schedule_spec(spec)
    raise TypeError(
        f"a spec is a cron expression or a ScheduleSpec (see schedule_spec), "
        f"not {type(spec).__name__}"
    )


class _build_schedules:  # noqa: N801 - a namespace of request builders shared by both clients
    @staticmethod
    def create_schedule(
        schedule_id: str,
        workflow: str,
        spec: str | schedule_pb2.ScheduleSpec,
        trigger: str,
        payload: Mapping[str, Any] | None,
        catchup_window: DurationLike | None,
        missed_ticks: MissedTicksName | None,
        max_catchup_runs: int,
        overlap: OverlapName | None,
        paused: bool,
        actor: str,
    ) -> schedule_service_pb2.CreateScheduleRequest:
        return schedule_service_pb2.CreateScheduleRequest(
            schedule_id=_required("schedule_id", schedule_id),
            workflow=_required("workflow", workflow),
            trigger=trigger,
            payload=to_struct({} if payload is None else payload, where="payload"),
            spec=_spec(spec),
            paused=paused,
            actor=actor,
            **policy_fields(
                catchup_window=catchup_window,
                missed_ticks=missed_ticks,
                max_catchup_runs=max_catchup_runs,
                overlap=overlap,
            ),
        )

    @staticmethod
    def list_schedules(
        workflow: str,
        states: Sequence[ScheduleStateLike] | ScheduleStateLike,
        page_size: int,
        page_token: str,
    ) -> schedule_service_pb2.ListSchedulesRequest:
        return schedule_service_pb2.ListSchedulesRequest(
            workflow=workflow,
            states=_each(states, schedule_state),
            page_size=page_size,
            page_token=page_token,
        )

    @staticmethod
    def update_schedule(
        schedule: schedule_pb2.Schedule, fields: Sequence[str], etag: str
    ) -> schedule_service_pb2.UpdateScheduleRequest:
        if not isinstance(schedule, schedule_pb2.Schedule):
            raise TypeError(f"update_schedule takes a Schedule, not {type(schedule).__name__}")
        _required("schedule.id", schedule.id)
        if isinstance(fields, str):
            raise TypeError("fields is a list of field names, not a string")
        unknown = [f for f in fields if f not in SCHEDULE_UPDATE_FIELDS]
        if unknown:
            raise ValueError(
                f"fields {unknown} cannot be updated; the fields are: "
                f"{', '.join(SCHEDULE_UPDATE_FIELDS)}"
            )
        return schedule_service_pb2.UpdateScheduleRequest(
            schedule=schedule, update_mask=field_mask_pb2.FieldMask(paths=fields), etag=etag
        )

    @staticmethod
    def pause_or_resume(
        request: type[PauseOrResume], schedule_id: str, actor: str, note: str
    ) -> PauseOrResume:
        """PauseSchedule's or ResumeSchedule's request: they have the same fields."""
        return request(schedule_id=schedule_id, actor=_required("actor", actor), note=note)

    @staticmethod
    def trigger_schedule(
        schedule_id: str, actor: str, idempotency_key: str
    ) -> schedule_service_pb2.TriggerScheduleRequest:
        return schedule_service_pb2.TriggerScheduleRequest(
            schedule_id=schedule_id,
            actor=_required("actor", actor),
            idempotency_key=idempotency_key,
        )

    @staticmethod
    def backfill_schedule(
        schedule_id: str, start_time: datetime, end_time: datetime, actor: str
    ) -> schedule_service_pb2.BackfillScheduleRequest:
        """A naive datetime is local time, as for `list_runs`."""
        start, end = _timestamp("start_time", start_time), _timestamp("end_time", end_time)
        if start is None or end is None:
            raise TypeError("a backfill needs a start_time and an end_time (datetimes)")
        if end.ToNanoseconds() < start.ToNanoseconds():
            raise ValueError("end_time is before start_time")
        return schedule_service_pb2.BackfillScheduleRequest(
            schedule_id=schedule_id, start_time=start, end_time=end, actor=_required("actor", actor)
        )

    @staticmethod
    def preview_schedule(
        schedule_id: str,
        spec: str | schedule_pb2.ScheduleSpec | None,
        count: int,
        after: datetime | None,
    ) -> schedule_service_pb2.PreviewScheduleRequest:
        if bool(schedule_id) == (spec is not None):
            raise ValueError("preview a schedule_id or a spec, one of them")
        if isinstance(count, bool) or not isinstance(count, int):
            raise TypeError(f"count must be a whole number, not {count!r}")
        if not 1 <= count <= MAX_PREVIEW:
            raise ValueError(f"count must be from 1 to {MAX_PREVIEW}, got {count}")
        return schedule_service_pb2.PreviewScheduleRequest(
            schedule_id=schedule_id,
            spec=None if spec is None else _spec(spec),
            count=count,
            after=_timestamp("after", after),
        )
