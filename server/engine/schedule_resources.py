"""Schedules as resources (ScheduleService): create, read, list, update, delete, pause, resume
and preview (trigger now and backfill: `schedule_starts`).

A schedule created here ("api") and one a workflow's cron trigger makes ("definition") tick the
same way (`schedule_commands`). A definition's schedule changes only by registering a new version
of its workflow; pause, resume, trigger and backfill work on both. Every command on a schedule
runs under its row lock, so it never interleaves with a tick being decided (the timer loop
claims with SKIP LOCKED and comes back to it)."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from server.engine.core import log
from server.engine.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
)
from server.engine.model import ScheduleRunOrigin
from server.engine.payload import validate_payload
from server.engine.schedule import Tick, next_ticks
from server.engine.schedule.due_ticks import ON_TIME_GRACE, TickOutcome
from server.engine.schedule_commands import (
    first_tick_after,
    tick_at,
)
from server.engine.schedule_starts import ScheduleStartCommands, require_actor
from server.engine.validation import check_cron_spec
from server.store import attempts, schedules
from server.store.db import Connection
from server.store.schedules import (
    DecidedTick,
    ScheduleConfig,
    ScheduleState,
    StoredSchedule,
    TickRecord,
)

SCHEDULE_ID = re.compile(r"[A-Za-z0-9_.:-]{1,200}")
"""Ids of schedules created through the API; "/" is left to definitions' "<workflow>/<trigger>"
so that the two never collide."""

NEXT_TICKS = 5
RECENT_TICKS = 10
MAX_PREVIEW = 100

UPDATABLE = (
    "trigger",
    "payload",
    "spec",
    "catchup_window",
    "missed_tick_policy",
    "max_catchup_runs",
    "overlap_policy",
)
"""UpdateSchedule's field-mask paths."""

_SPEC_FIELDS = {
    "cron_expression",
    "time_zone",
    "start_at",
    "end_at",
    "jitter_ms",
    "skipped_time_policy",
    "repeated_time_policy",
}


class ScheduleHealth(StrEnum):
    OK = "ok"
    OVERDUE = "overdue"
    """A tick is due and has not fired: no server's timer loop runs, or it is behind."""


@dataclass(frozen=True)
class ScheduleView:
    stored: StoredSchedule
    next_ticks: list[Tick]
    recent_ticks: list[TickRecord]
    buffered: Tick | None
    health: ScheduleHealth


class ScheduleResourceCommands(ScheduleStartCommands):
    # --- create, read, change ----------------------------------------------------------------

    async def create_schedule(self, config: ScheduleConfig, paused_by: str | None) -> ScheduleView:
        """`paused_by`: create it paused, by that actor."""
        problems: list[FieldViolation] = []
        if not SCHEDULE_ID.fullmatch(config.id):
            problems.append(
                FieldViolation(
                    "schedule_id",
                    "must be 1 to 200 letters, digits or '-_.:' ('/' is for the schedules of "
                    "workflows' cron triggers)",
                )
            )
        config = await self._checked(config, problems)
        async with self._db.transaction() as conn:
            now = await attempts.database_now(conn)
            first = first_tick_after(config, now)
            if not await schedules.insert(conn, config, first, paused_by):
                raise AlreadyExists(
                    f"schedule '{config.id}' already exists",
                    reason="SCHEDULE_EXISTS",
                    metadata={"schedule_id": config.id},
                )
            view = await self._view(conn, config.id, now, recent=False)
        if first is not None and paused_by is None:
            self._wakeups.timers_changed((first.fire_at - now) / timedelta(milliseconds=1))
        log.info("schedule_created", schedule=config.id, workflow=config.workflow)
        return view

    async def get_schedule(self, schedule_id: str) -> ScheduleView:
        async with self._db.connect() as conn:
            now = await attempts.database_now(conn)
            return await self._view(conn, schedule_id, now, recent=True)

    async def list_schedules(
        self, workflow: str, states: list[ScheduleState], after_id: str, limit: int
    ) -> list[ScheduleView]:
        async with self._db.connect() as conn:
            now = await attempts.database_now(conn)
            stored = await schedules.list_page(conn, workflow, states, after_id, limit)
        return [schedule_view(s, now, []) for s in stored]

    async def update_schedule(
        self, schedule_id: str, changed: ScheduleConfig, paths: list[str], etag: str
    ) -> ScheduleView:
        """Takes the fields `paths` names (UPDATABLE; all of them when empty) from `changed`."""
        unknown = [p for p in paths if p not in UPDATABLE]
        if unknown:
            raise InvalidArgument(
                f"update_mask names fields that cannot be updated: {', '.join(unknown)}",
                [
                    FieldViolation("update_mask", f"{p!r} is not one of {', '.join(UPDATABLE)}")
                    for p in unknown
                ],
            )
        taken = set(paths or UPDATABLE)
        async with self._db.transaction() as conn:
            locked = await self._stored_schedule(conn, schedule_id, lock=True)
            _check_api_origin(locked, "updated")
            _check_etag(locked, etag)
            # Merged with what is stored now: fields outside the mask keep their values.
            merged = await self._checked(_merge(locked.config, changed, taken), [])
            now = await attempts.database_now(conn)
            move = merged.spec() != locked.config.spec()
            first = first_tick_after(merged, now) if move else None
            await schedules.update_config(conn, merged, first, move=move)
            view = await self._view(conn, schedule_id, now, recent=True)
        if first is not None and locked.state is ScheduleState.ACTIVE:
            self._wakeups.timers_changed((first.fire_at - now) / timedelta(milliseconds=1))
        log.info("schedule_updated", schedule=schedule_id, fields=sorted(taken))
        return view

    async def delete_schedule(self, schedule_id: str, etag: str) -> None:
        async with self._db.transaction() as conn:
            stored = await self._stored_schedule(conn, schedule_id, lock=True)
            _check_api_origin(stored, "deleted")
            _check_etag(stored, etag)
            await schedules.delete(conn, schedule_id)
        log.info("schedule_deleted", schedule=schedule_id)

    # --- pause, resume -----------------------------------------------------------------------

    async def pause_schedule(self, schedule_id: str, actor: str, note: str) -> ScheduleView:
        require_actor(actor)
        async with self._db.transaction() as conn:
            stored = await self._stored_schedule(conn, schedule_id, lock=True)
            _check_not_stopped(stored, "paused")
            if stored.state is ScheduleState.ACTIVE:
                await schedules.set_paused(conn, schedule_id, actor, note)
                log.info("schedule_paused", schedule=schedule_id, actor=actor)
            now = await attempts.database_now(conn)
            return await self._view(conn, schedule_id, now, recent=True)

    async def resume_schedule(self, schedule_id: str, actor: str, note: str) -> ScheduleView:
        """From the first tick after now: what fell due while paused is not made up."""
        require_actor(actor)
        first = None
        async with self._db.transaction() as conn:
            stored = await self._stored_schedule(conn, schedule_id, lock=True)
            _check_not_stopped(stored, "resumed")
            now = await attempts.database_now(conn)
            if stored.state is ScheduleState.PAUSED:
                first = first_tick_after(stored.config, now)
                await schedules.set_resumed(conn, schedule_id, first)
                await self._record_paused_ticks(conn, stored, now, actor)
                log.info("schedule_resumed", schedule=schedule_id, actor=actor, note=note)
            view = await self._view(conn, schedule_id, now, recent=True)
        if first is not None:
            self._wakeups.timers_changed((first.fire_at - now) / timedelta(milliseconds=1))
        return view

    async def _record_paused_ticks(
        self, conn: Connection, stored: StoredSchedule, now: datetime, actor: str
    ) -> None:
        """One decision for every tick that fell due while paused (a per-second schedule
        paused for a week has 600,000): on the first of them, which the schedule still points
        at."""
        due = stored.next_nominal_at
        if due is None or due > now:
            return
        paused_by = f"paused by {stored.paused_by}" + (
            f" ({stored.pause_note})" if stored.pause_note else ""
        )
        reason = (
            f"{paused_by}: this tick and any after it up to the resume by {actor} at "
            f"{now.isoformat()} did not run"
        )
        tick = DecidedTick(
            stored.config.id,
            due,
            now,
            ScheduleRunOrigin.TICK,
            TickOutcome.SKIPPED_PAUSED,
            None,
            reason,
        )
        await schedules.record_ticks(conn, [tick])

    # --- preview -----------------------------------------------------------------------------

    async def preview_schedule(
        self, schedule_id: str, spec: ScheduleConfig | None, count: int, after: datetime | None
    ) -> list[Tick]:
        """The next `count` ticks of a saved schedule, or of `spec` (a config holding only a
        spec, checked here)."""
        if spec is None:
            async with self._db.connect() as conn:
                spec = (await self._stored_schedule(conn, schedule_id)).config
        else:
            problems: list[FieldViolation] = []
            _check_spec(spec, problems)
            if problems:
                raise InvalidArgument("invalid schedule spec", problems)
        if after is None:
            async with self._db.connect() as conn:
                after = await attempts.database_now(conn)
        return next_ticks(spec.spec(), after, count, spec.id)

    # --- helpers -----------------------------------------------------------------------------

    async def _checked(
        self, config: ScheduleConfig, problems: list[FieldViolation]
    ) -> ScheduleConfig:
        """The config with its trigger resolved (empty: the workflow's default) and its payload
        checked against the trigger's contract now, not at tick time; InvalidArgument lists
        every problem."""
        _check_spec(config, problems)
        if not config.workflow:
            problems.append(FieldViolation("workflow", "must not be empty"))
        if problems:
            raise InvalidArgument("invalid schedule", problems)
        self._check_size("payload", config.payload)
        defn = await self._cached_definition(await self._latest_id(config.workflow))
        trigger = defn.trigger(config.trigger)
        if trigger is None:
            raise NotFound(
                f"workflow '{config.workflow}' has no trigger '{config.trigger}'",
                reason="TRIGGER_NOT_FOUND",
                metadata={"workflow": config.workflow, "trigger": config.trigger},
            )
        validate_payload(trigger, config.payload, datetime.now(UTC))
        return replace(config, trigger=trigger.name)

    async def _view(
        self, conn: Connection, schedule_id: str, now: datetime, *, recent: bool
    ) -> ScheduleView:
        stored = await self._stored_schedule(conn, schedule_id)
        ticks = await schedules.recent_ticks(conn, schedule_id, RECENT_TICKS) if recent else []
        return schedule_view(stored, now, ticks)


def schedule_view(stored: StoredSchedule, now: datetime, recent: list[TickRecord]) -> ScheduleView:
    spec = stored.config.spec()
    upcoming: list[Tick] = []
    if stored.state is ScheduleState.ACTIVE and stored.next_nominal_at is not None:
        after = stored.next_nominal_at - timedelta(microseconds=1)
        upcoming = next_ticks(spec, after, NEXT_TICKS, stored.config.id)
    held = stored.buffered_nominal_at
    buffered = tick_at(stored.config, held) if held is not None else None
    overdue = (
        stored.state is ScheduleState.ACTIVE
        and stored.next_due_at is not None
        and now - stored.next_due_at > ON_TIME_GRACE
    )
    health = ScheduleHealth.OVERDUE if overdue else ScheduleHealth.OK
    return ScheduleView(stored, upcoming, recent, buffered, health)


def _check_spec(config: ScheduleConfig, problems: list[FieldViolation]) -> None:
    check_cron_spec(
        config.cron_expression, config.time_zone, "spec.cron_expression", "spec.time_zone", problems
    )
    if config.start_at and config.end_at and config.end_at < config.start_at:
        problems.append(FieldViolation("spec.end_time", "must not be before start_time"))
    if config.jitter_ms < 0:
        problems.append(FieldViolation("spec.jitter", "must not be negative"))
    if config.catchup_window_ms < 0:
        problems.append(FieldViolation("catchup_window", "must not be negative"))
    if config.max_catchup_runs < 0:
        problems.append(FieldViolation("max_catchup_runs", "must not be negative"))


def _merge(current: ScheduleConfig, changed: ScheduleConfig, taken: set[str]) -> ScheduleConfig:
    values = {}
    if "spec" in taken:
        values.update({name: getattr(changed, name) for name in _SPEC_FIELDS})
    if "catchup_window" in taken:
        values["catchup_window_ms"] = changed.catchup_window_ms
    for name in ("trigger", "payload", "missed_tick_policy", "max_catchup_runs", "overlap_policy"):
        if name in taken:
            values[name] = getattr(changed, name)
    return replace(current, **values)


def _check_api_origin(stored: StoredSchedule, done: str) -> None:
    if stored.origin != "api":
        raise FailedPrecondition(
            f"schedule '{stored.config.id}' is workflow '{stored.config.workflow}''s cron "
            f"trigger '{stored.config.trigger}': it is {done} by registering a new version of "
            "the workflow",
            reason="SCHEDULE_FROM_DEFINITION",
            metadata={"schedule_id": stored.config.id, "workflow": stored.config.workflow},
        )


def _check_etag(stored: StoredSchedule, etag: str) -> None:
    if etag and etag != str(stored.revision):
        raise Aborted(
            f"schedule '{stored.config.id}' changed since etag '{etag}' (now "
            f"'{stored.revision}'): read it again",
            reason="ETAG_MISMATCH",
            metadata={"schedule_id": stored.config.id, "etag": str(stored.revision)},
        )


def _check_not_stopped(stored: StoredSchedule, done: str) -> None:
    if stored.state is ScheduleState.STOPPED:
        raise FailedPrecondition(
            f"schedule '{stored.config.id}' is stopped (the latest version of workflow "
            f"'{stored.config.workflow}' has no trigger '{stored.config.trigger}') and cannot "
            f"be {done}",
            reason="SCHEDULE_STOPPED",
            metadata={"schedule_id": stored.config.id},
        )
