"""Schedules and their ticks: the rows the timer loop claims and the history it writes.

A due schedule is claimed with FOR UPDATE SKIP LOCKED, so each is decided by one replica at a
time; the tick rows (UNIQUE schedule + nominal instant) make a decided tick final even across
claims."""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from server.engine.model import (
    JSON,
    TERMINAL_RUN_STATUSES,
    MissedTickPolicy,
    OverlapPolicy,
    ScheduleRunOrigin,
)
from server.engine.schedule import (
    RepeatedTimePolicy,
    ScheduleSpec,
    SkippedTimePolicy,
    Tick,
    parse_cron,
    parse_time_zone,
)
from server.engine.schedule.due_ticks import AliveSeconds, TickOutcome, TickPolicies
from server.store.db import Connection, dumps


@dataclass(frozen=True)
class ScheduleConfig:
    """What a schedule is: what it starts, when, and its policies (the columns a definition's
    cron trigger or CreateSchedule sets)."""

    id: str
    workflow: str
    trigger: str
    payload: dict[str, JSON]
    cron_expression: str
    time_zone: str
    start_at: datetime | None
    end_at: datetime | None
    jitter_ms: int
    skipped_time_policy: SkippedTimePolicy
    repeated_time_policy: RepeatedTimePolicy
    catchup_window_ms: int
    missed_tick_policy: MissedTickPolicy
    max_catchup_runs: int
    overlap_policy: OverlapPolicy

    def spec(self) -> ScheduleSpec:
        """The spec (expression and zone were validated when the schedule was written)."""
        return ScheduleSpec(
            expression=parse_cron(self.cron_expression),
            zone=parse_time_zone(self.time_zone),
            start=self.start_at,
            end=self.end_at,
            jitter=timedelta(milliseconds=self.jitter_ms),
            skipped_time=self.skipped_time_policy,
            repeated_time=self.repeated_time_policy,
        )

    def policies(self) -> TickPolicies:
        return TickPolicies(
            catchup_window=timedelta(milliseconds=self.catchup_window_ms),
            missed=self.missed_tick_policy,
            max_catchup_runs=self.max_catchup_runs,
            overlap=self.overlap_policy,
        )

    def columns(self) -> dict[str, Any]:
        """As statement parameters (enums as their values, the payload as JSON)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in values.items():
            if isinstance(value, StrEnum):
                values[name] = value.value
        values["payload"] = dumps(self.payload)
        return values


_CONFIG_COLUMNS = [f.name for f in fields(ScheduleConfig)]


def _config(row: Any) -> ScheduleConfig:
    return ScheduleConfig(
        id=row.id,
        workflow=row.workflow,
        trigger=row.trigger,
        payload=row.payload,
        cron_expression=row.cron_expression,
        time_zone=row.time_zone,
        start_at=row.start_at,
        end_at=row.end_at,
        jitter_ms=row.jitter_ms,
        skipped_time_policy=SkippedTimePolicy(row.skipped_time_policy),
        repeated_time_policy=RepeatedTimePolicy(row.repeated_time_policy),
        catchup_window_ms=row.catchup_window_ms,
        missed_tick_policy=MissedTickPolicy(row.missed_tick_policy),
        max_catchup_runs=row.max_catchup_runs,
        overlap_policy=OverlapPolicy(row.overlap_policy),
    )


@dataclass(frozen=True)
class DueSchedule:
    config: ScheduleConfig
    next_nominal_at: datetime | None
    """None: the spec has no tick left."""
    due: bool
    """Its next tick is due (else it was claimed for its buffered tick only)."""
    buffered_nominal_at: datetime | None
    """BUFFER_ONE: the tick held until the last run ends."""
    last_run_id: uuid.UUID | None
    last_run_active: bool
    """The last run a tick started is still active (the overlap policy's question)."""
    now: datetime
    """Postgres' clock at the claim (the transaction's start): the instant the ticks are
    decided at, the same for every replica."""


_CLAIM_COLUMNS = (
    f"{', '.join('s.' + c for c in _CONFIG_COLUMNS)}, s.next_nominal_at, s.next_due_at, "
    "s.buffered_nominal_at, "
    "s.last_run_id, now() AS now, "
    "EXISTS (SELECT 1 FROM runs r WHERE r.id = s.last_run_id AND r.status <> ALL(:ended)) "
    "AS last_run_active"
)
# A run not ended yet is active for the overlap policy: paused or waiting at a gate included.
_ENDED = [s.value for s in TERMINAL_RUN_STATUSES]


async def mark_alive(conn: Connection) -> None:
    """Records that a timer loop runs in this second (before each claim, in a statement of its
    own: replicas that insert the same second wait for each other's commit)."""
    await conn.execute(
        "INSERT INTO timer_alive (second) VALUES (floor(extract(epoch FROM now()))) "
        "ON CONFLICT DO NOTHING"
    )


async def alive_seconds(conn: Connection, since: datetime) -> AliveSeconds:
    rows = await conn.execute(
        "SELECT second FROM timer_alive WHERE second >= :since",
        {"since": math.floor(since.timestamp())},
    )
    return AliveSeconds(frozenset(r.second for r in rows))


async def prune_alive(conn: Connection, kept: timedelta) -> None:
    """Forgets the seconds older than `kept`: a tick due before them is missed if it was not
    decided then."""
    await conn.execute(
        "DELETE FROM timer_alive WHERE second < extract(epoch FROM now()) - :kept",
        {"kept": kept.total_seconds()},
    )


async def claim_due(conn: Connection, limit: int) -> list[DueSchedule]:
    """Active schedules whose next tick is due, then those holding a buffered tick whose last
    run has ended, locked for this transaction; those another replica is deciding are
    skipped."""
    due = await conn.execute(
        f"SELECT {_CLAIM_COLUMNS} FROM schedules s "
        "WHERE s.state = 'active' AND s.next_due_at <= now() "
        "ORDER BY s.next_due_at LIMIT :limit "
        "FOR UPDATE OF s SKIP LOCKED",
        {"limit": limit, "ended": _ENDED},
    )
    claimed = {r.id: r for r in due}
    if len(claimed) < limit:
        released = await conn.execute(
            f"SELECT {_CLAIM_COLUMNS} FROM schedules s "
            "WHERE s.buffered_nominal_at IS NOT NULL AND s.state = 'active' "
            "  AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.id = s.last_run_id "
            "    AND r.status <> ALL(:ended)) "
            "LIMIT :limit FOR UPDATE OF s SKIP LOCKED",
            {"limit": limit - len(claimed), "ended": _ENDED},
        )
        for r in released:
            claimed.setdefault(r.id, r)
    return [
        DueSchedule(
            _config(r),
            r.next_nominal_at,
            r.next_due_at is not None and r.next_due_at <= r.now,
            r.buffered_nominal_at,
            r.last_run_id,
            r.last_run_active,
            r.now,
        )
        for r in claimed.values()
    ]


@dataclass(frozen=True)
class DecidedTick:
    schedule_id: str
    nominal_at: datetime
    fired_at: datetime
    origin: ScheduleRunOrigin
    outcome: TickOutcome
    run_id: uuid.UUID | None = None
    reason: str = ""


async def record_ticks(conn: Connection, ticks: list[DecidedTick]) -> set[tuple[str, datetime]]:
    """Inserts the decided ticks in one statement; returns the (schedule, nominal instant) of
    those written: a tick decided before (by a backfill, say) is not written again."""
    if not ticks:
        return set()
    rows = await conn.execute(
        "INSERT INTO schedule_ticks (schedule_id, nominal_at, fired_at, run_id, origin, "
        "  outcome, reason) "
        "SELECT x.schedule_id, x.nominal_at, x.fired_at, x.run_id, x.origin, x.outcome, x.reason "
        "FROM jsonb_to_recordset(CAST(:ticks AS jsonb)) AS x(schedule_id text, "
        "  nominal_at timestamptz, fired_at timestamptz, run_id uuid, origin text, "
        "  outcome text, reason text) "
        "ON CONFLICT (schedule_id, nominal_at) DO NOTHING "
        "RETURNING schedule_id, nominal_at",
        {
            "ticks": dumps(
                [
                    {
                        "schedule_id": t.schedule_id,
                        "nominal_at": t.nominal_at.isoformat(),
                        "fired_at": t.fired_at.isoformat(),
                        "run_id": str(t.run_id) if t.run_id else None,
                        "origin": t.origin.value,
                        "outcome": t.outcome.value,
                        "reason": t.reason,
                    }
                    for t in ticks
                ]
            )
        },
    )
    return {(r.schedule_id, r.nominal_at.astimezone(UTC)) for r in rows}


@dataclass(frozen=True)
class Advance:
    """A claimed schedule's move: to its next tick (None: the spec has none left), the latest
    tick decided and run started (None: unchanged), and the tick it holds (BUFFER_ONE)."""

    schedule_id: str
    next_tick: Tick | None
    last_tick_at: datetime | None
    last_run_id: uuid.UUID | None
    buffered_nominal_at: datetime | None


async def advance(conn: Connection, moves: list[Advance]) -> None:
    """Moves claimed schedules, in one statement."""
    if not moves:
        return
    await conn.execute(
        "UPDATE schedules s SET next_nominal_at = x.nominal, next_due_at = x.due, "
        "  last_tick_at = coalesce(x.last_tick, s.last_tick_at), "
        "  last_run_id = coalesce(x.last_run, s.last_run_id), buffered_nominal_at = x.buffered "
        "FROM jsonb_to_recordset(CAST(:moves AS jsonb)) AS x(id text, nominal timestamptz, "
        "  due timestamptz, last_tick timestamptz, last_run uuid, buffered timestamptz) "
        "WHERE s.id = x.id",
        {
            "moves": dumps(
                [
                    {
                        "id": m.schedule_id,
                        "nominal": _iso(m.next_tick.nominal if m.next_tick else None),
                        "due": _iso(m.next_tick.fire_at if m.next_tick else None),
                        "last_tick": _iso(m.last_tick_at),
                        "last_run": str(m.last_run_id) if m.last_run_id else None,
                        "buffered": _iso(m.buffered_nominal_at),
                    }
                    for m in moves
                ]
            )
        },
    )


def _iso(instant: datetime | None) -> str | None:
    return instant.isoformat() if instant else None


async def lock_definition_schedules(
    conn: Connection, workflow: str
) -> dict[str, tuple[ScheduleConfig, str]]:
    """The schedules registration keeps for `workflow`'s cron triggers, by trigger, with their
    state; locked until the registration commits."""
    rows = await conn.execute(
        f"SELECT {', '.join(_CONFIG_COLUMNS)}, state FROM schedules "
        "WHERE workflow = :workflow AND origin = 'definition' FOR UPDATE",
        {"workflow": workflow},
    )
    return {r.trigger: (_config(r), r.state) for r in rows}


async def put_definition_schedule(
    conn: Connection, config: ScheduleConfig, first_tick: Tick | None
) -> None:
    """Creates a definition's schedule, or makes an existing one follow a changed trigger:
    active again (unless paused), from `first_tick` on. A schedule created through the API
    with the same id is left alone."""
    columns = config.columns()
    names = ", ".join(_CONFIG_COLUMNS)
    values = ", ".join(
        "CAST(:payload AS jsonb)" if c == "payload" else f":{c}" for c in _CONFIG_COLUMNS
    )
    updates = ", ".join(f"{c} = excluded.{c}" for c in _CONFIG_COLUMNS if c != "id")
    await conn.execute(
        f"INSERT INTO schedules ({names}, state, origin, next_nominal_at, next_due_at) "
        f"VALUES ({values}, 'active', 'definition', :nominal, :due) "
        f"ON CONFLICT (id) DO UPDATE SET {updates}, "
        "  state = CASE WHEN schedules.state = 'paused' THEN 'paused' ELSE 'active' END, "
        "  next_nominal_at = excluded.next_nominal_at, next_due_at = excluded.next_due_at, "
        "  revision = schedules.revision + 1, updated_at = now() "
        "WHERE schedules.origin = 'definition'",
        {
            **columns,
            "nominal": first_tick.nominal if first_tick else None,
            "due": first_tick.fire_at if first_tick else None,
        },
    )


async def stop_definition_schedules(conn: Connection, ids: list[str]) -> None:
    """Stops the schedules of triggers the latest version dropped (their history stays)."""
    await conn.execute(
        "UPDATE schedules SET state = 'stopped', next_nominal_at = NULL, next_due_at = NULL, "
        "  revision = revision + 1, updated_at = now() "
        "WHERE id = ANY(:ids) AND origin = 'definition'",
        {"ids": ids},
    )


@dataclass(frozen=True)
class TickRecord:
    nominal_at: datetime
    fired_at: datetime
    run_id: uuid.UUID | None
    origin: ScheduleRunOrigin
    outcome: TickOutcome
    reason: str


async def recent_ticks(conn: Connection, schedule_id: str, limit: int) -> list[TickRecord]:
    """The schedule's latest decided ticks, newest first."""
    rows = await conn.execute(
        "SELECT nominal_at, fired_at, run_id, origin, outcome, reason FROM schedule_ticks "
        "WHERE schedule_id = :id ORDER BY nominal_at DESC LIMIT :limit",
        {"id": schedule_id, "limit": limit},
    )
    return [_tick_record(r) for r in rows]


def _tick_record(row: Any) -> TickRecord:
    return TickRecord(
        row.nominal_at.astimezone(UTC),
        row.fired_at,
        row.run_id,
        ScheduleRunOrigin(row.origin),
        TickOutcome(row.outcome),
        row.reason,
    )


# --- the resource (ScheduleService) ------------------------------------------------------------


class ScheduleState(StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"
    STOPPED = "stopped"
    """The latest version of its workflow no longer declares its trigger."""


@dataclass(frozen=True)
class StoredSchedule:
    config: ScheduleConfig
    state: ScheduleState
    pause_note: str
    paused_by: str
    origin: str
    """"definition" (a workflow's cron trigger) or "api" (CreateSchedule)."""
    revision: int
    next_nominal_at: datetime | None
    next_due_at: datetime | None
    buffered_nominal_at: datetime | None
    created_at: datetime
    updated_at: datetime


_STORED_COLUMNS = (
    f"{', '.join(_CONFIG_COLUMNS)}, state, pause_note, paused_by, origin, revision, "
    "next_nominal_at, next_due_at, buffered_nominal_at, created_at, updated_at"
)


def _stored(row: Any) -> StoredSchedule:
    return StoredSchedule(
        _config(row),
        ScheduleState(row.state),
        row.pause_note,
        row.paused_by,
        row.origin,
        row.revision,
        row.next_nominal_at,
        row.next_due_at,
        row.buffered_nominal_at,
        row.created_at,
        row.updated_at,
    )


async def get(conn: Connection, schedule_id: str, *, lock: bool = False) -> StoredSchedule | None:
    """The schedule, locked until the transaction ends with `lock` (a command on it)."""
    rows = await conn.execute(
        f"SELECT {_STORED_COLUMNS} FROM schedules WHERE id = :id" + (" FOR UPDATE" if lock else ""),
        {"id": schedule_id},
    )
    row = rows.first()
    return _stored(row) if row else None


async def list_page(
    conn: Connection, workflow: str, states: list[ScheduleState], after_id: str, limit: int
) -> list[StoredSchedule]:
    """Schedules by id after `after_id`, optionally of one workflow and in some states."""
    rows = await conn.execute(
        f"SELECT {_STORED_COLUMNS} FROM schedules "
        "WHERE id > :after AND (:workflow = '' OR workflow = :workflow) "
        "  AND (cardinality(CAST(:states AS text[])) = 0 OR state = ANY(:states)) "
        "ORDER BY id LIMIT :limit",
        {
            "after": after_id,
            "workflow": workflow,
            "states": [s.value for s in states],
            "limit": limit,
        },
    )
    return [_stored(r) for r in rows]


async def insert(
    conn: Connection, config: ScheduleConfig, first_tick: Tick | None, paused_by: str | None
) -> bool:
    """Creates an API schedule (paused when `paused_by` is set); False if the id is taken."""
    names = ", ".join(_CONFIG_COLUMNS)
    values = ", ".join(
        "CAST(:payload AS jsonb)" if c == "payload" else f":{c}" for c in _CONFIG_COLUMNS
    )
    rows = await conn.execute(
        f"INSERT INTO schedules ({names}, state, paused_by, origin, next_nominal_at, "
        "  next_due_at) "
        f"VALUES ({values}, :state, :paused_by, 'api', :nominal, :due) "
        "ON CONFLICT (id) DO NOTHING RETURNING id",
        {
            **config.columns(),
            "state": (ScheduleState.ACTIVE if paused_by is None else ScheduleState.PAUSED).value,
            "paused_by": paused_by or "",
            "nominal": first_tick.nominal if first_tick else None,
            "due": first_tick.fire_at if first_tick else None,
        },
    )
    return rows.first() is not None


async def update_config(
    conn: Connection, config: ScheduleConfig, next_tick: Tick | None, *, move: bool
) -> None:
    """Writes an API schedule's new config; with `move` (its spec changed) it ticks from
    `next_tick` on."""
    updates = ", ".join(
        "payload = CAST(:payload AS jsonb)" if c == "payload" else f"{c} = :{c}"
        for c in _CONFIG_COLUMNS
        if c != "id"
    )
    moved = ", next_nominal_at = :nominal, next_due_at = :due" if move else ""
    await conn.execute(
        f"UPDATE schedules SET {updates}{moved}, revision = revision + 1, updated_at = now() "
        "WHERE id = :id",
        {
            **config.columns(),
            "nominal": next_tick.nominal if next_tick else None,
            "due": next_tick.fire_at if next_tick else None,
        },
    )


async def delete(conn: Connection, schedule_id: str) -> None:
    await conn.execute("DELETE FROM schedules WHERE id = :id", {"id": schedule_id})


async def set_paused(conn: Connection, schedule_id: str, actor: str, note: str) -> None:
    await conn.execute(
        "UPDATE schedules SET state = 'paused', paused_by = :actor, pause_note = :note, "
        "  revision = revision + 1, updated_at = now() WHERE id = :id",
        {"id": schedule_id, "actor": actor, "note": note},
    )


async def set_resumed(conn: Connection, schedule_id: str, next_tick: Tick | None) -> None:
    """Active again from `next_tick` (the first after now): the paused interval is not made
    up."""
    await conn.execute(
        "UPDATE schedules SET state = 'active', paused_by = '', pause_note = '', "
        "  next_nominal_at = :nominal, next_due_at = :due, "
        "  revision = revision + 1, updated_at = now() WHERE id = :id",
        {
            "id": schedule_id,
            "nominal": next_tick.nominal if next_tick else None,
            "due": next_tick.fire_at if next_tick else None,
        },
    )


async def decided_between(
    conn: Connection, schedule_id: str, start: datetime, end: datetime
) -> dict[datetime, TickRecord]:
    """The schedule's decided ticks with nominal instants in [start, end], by instant."""
    rows = await conn.execute(
        "SELECT nominal_at, fired_at, run_id, origin, outcome, reason FROM schedule_ticks "
        "WHERE schedule_id = :id AND nominal_at BETWEEN :start AND :end",
        {"id": schedule_id, "start": start, "end": end},
    )
    return {r.nominal_at.astimezone(UTC): _tick_record(r) for r in rows}


async def tick_of_run(conn: Connection, schedule_id: str, run_id: uuid.UUID) -> TickRecord | None:
    rows = await conn.execute(
        "SELECT nominal_at, fired_at, run_id, origin, outcome, reason FROM schedule_ticks "
        "WHERE schedule_id = :id AND run_id = :run_id",
        {"id": schedule_id, "run_id": run_id},
    )
    row = rows.first()
    return _tick_record(row) if row else None
