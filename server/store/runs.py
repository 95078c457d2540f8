"""Runs: create, lock for a decision, read with steps and attempts, list with keyset paging."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from server.engine.model import (
    COMPENSATION_SUFFIX,
    JSON,
    LIVE_STEP_STATUSES,
    AttemptStatus,
    Failure,
    RunStatus,
    ScheduleOrigin,
    ScheduleRunOrigin,
    StepStatus,
)
from server.engine.views import AttemptView, ChildView, RunView, StepView
from server.store.db import Connection

_SCHEDULE_COLUMNS = "schedule_id, schedule_nominal_at, schedule_fired_at, schedule_origin"

_RUN_COLUMNS = (
    "id, workflow_name, workflow_version, trigger, status, payload, context, error, "
    "idempotency_key, source_run_id, parent_run_id, parent_step, last_seq, created_at, "
    "started_at, ended_at, updated_at, " + _SCHEDULE_COLUMNS
)


@dataclass(frozen=True)
class NewRun:
    id: uuid.UUID
    workflow_id: int
    workflow_name: str
    workflow_version: int
    trigger: str
    payload: dict[str, JSON]
    payload_hash: str
    idempotency_key: str | None
    source_run_id: uuid.UUID | None
    latest: bool = False
    """Started on the version believed to be the workflow's latest: written only if it still
    is when the statement runs (a replay keeps its source's version)."""
    parent_run_id: uuid.UUID | None = None
    parent_step: str | None = None
    """A child run: the run and step whose handler started it (its key is `child_key`)."""
    schedule: ScheduleOrigin | None = None
    """A run a schedule started (or a replay of one)."""


@dataclass(frozen=True)
class LockedRun:
    """The fields a decision needs, read under the run row's lock."""

    id: uuid.UUID
    workflow_id: int
    workflow_name: str
    status: RunStatus
    context: dict[str, JSON]
    error: dict[str, JSON] | None
    parent_run_id: uuid.UUID | None
    """A child run's parent: woken when the run ends (its wait_child steps)."""


RUN_LOCK_COLUMNS = (
    "r.id, r.workflow_id, r.workflow_name, r.status, r.context, r.error, r.parent_run_id"
)
"""The columns of a `LockedRun`, from the runs table aliased as r."""


@dataclass(frozen=True)
class KeyedRun:
    """What a StartRun with a taken idempotency key is compared with."""

    id: uuid.UUID
    workflow_name: str
    trigger: str
    payload_hash: str


async def find_by_idempotency_key(
    conn: Connection, workflow_name: str, key: str
) -> KeyedRun | None:
    """The run started with this key (keys are unique per workflow)."""
    row = (
        await conn.execute(
            (
                "SELECT id, workflow_name, trigger, payload_hash FROM runs "
                "WHERE workflow_name = :name AND idempotency_key = :key"
            ),
            {"name": workflow_name, "key": key},
        )
    ).first()
    return _keyed(row)


async def find_child_by_key(
    conn: Connection, parent_run_id: uuid.UUID, key: str
) -> KeyedRun | None:
    """The child run the parent's handlers started with this key, whatever its workflow."""
    row = (
        await conn.execute(
            "SELECT id, workflow_name, trigger, payload_hash FROM runs "
            "WHERE parent_run_id = :parent AND idempotency_key = :key",
            {"parent": parent_run_id, "key": child_key(parent_run_id, key)},
        )
    ).first()
    return _keyed(row)


def _keyed(row: Any) -> KeyedRun | None:
    if row is None:
        return None
    return KeyedRun(row.id, row.workflow_name, row.trigger, row.payload_hash)


async def lock(conn: Connection, run_id: uuid.UUID) -> LockedRun | None:
    row = (
        await conn.execute(
            f"SELECT {RUN_LOCK_COLUMNS} FROM runs r WHERE r.id = :id FOR UPDATE",
            {"id": run_id},
        )
    ).first()
    return locked_run(row) if row is not None else None


def locked_run(row: Any) -> LockedRun:
    return LockedRun(
        id=row.id,
        workflow_id=row.workflow_id,
        workflow_name=row.workflow_name,
        status=RunStatus(row.status),
        context=row.context,
        error=row.error,
        parent_run_id=row.parent_run_id,
    )


CHILD_KEY_PREFIX = "child:"
"""A child run's idempotency key is "child:<parent run id>/<key>": unique within its parent
(the runs' key index is per workflow)."""


def child_key(parent_run_id: uuid.UUID, key: str) -> str:
    return f"{CHILD_KEY_PREFIX}{parent_run_id}/{key}"


def handler_key(stored: str | None, parent_run_id: uuid.UUID | None) -> str | None:
    """The idempotency key as its caller gave it: a child's without the stored prefix."""
    if stored is None or parent_run_id is None:
        return stored
    return stored.removeprefix(child_key(parent_run_id, ""))


async def created_at(conn: Connection, run_id: uuid.UUID) -> datetime:
    return (  # type: ignore[no-any-return]
        await conn.execute("SELECT created_at FROM runs WHERE id = :id", {"id": run_id})
    ).scalar_one()


async def child(conn: Connection, parent_run_id: uuid.UUID, key: str) -> RunView | None:
    """The child run the parent's handlers started with this key, without its steps."""
    child_id = (
        await conn.execute(
            "SELECT id FROM runs WHERE parent_run_id = :parent AND idempotency_key = :key",
            {"parent": parent_run_id, "key": child_key(parent_run_id, key)},
        )
    ).scalar()
    return None if child_id is None else await get(conn, child_id, with_steps=False)


async def step_statuses(conn: Connection, run_id: uuid.UUID) -> dict[str, StepStatus]:
    rows = await conn.execute(("SELECT name, status FROM steps WHERE run_id = :id"), {"id": run_id})
    return {r.name: StepStatus(r.status) for r in rows}


async def get(conn: Connection, run_id: uuid.UUID, *, with_steps: bool = True) -> RunView | None:
    row = (
        await conn.execute(
            (
                f"SELECT {_RUN_COLUMNS}, workflow_id"
                + (f", {_CHILDREN}" if with_steps else "")
                + " FROM runs WHERE id = :id"
            ),
            {"id": run_id},
        )
    ).first()
    if row is None:
        return None
    if not with_steps:
        return _run(row, ())
    step_rows = await conn.execute(
        (
            "SELECT name, status, output, error, created_at, ended_at FROM steps "
            "WHERE run_id = :id ORDER BY position, created_at"
        ),
        {"id": run_id},
    )
    attempt_rows = await conn.execute(
        (
            "SELECT id, step_name, number, status, worker_id, output, error, progress, "
            "created_at, started_at, ended_at FROM attempts WHERE run_id = :id "
            "ORDER BY step_name, number"
        ),
        {"id": run_id},
    )
    attempts: dict[str, list[AttemptView]] = {}
    for a in attempt_rows:
        attempts.setdefault(a.step_name, []).append(
            AttemptView(
                id=a.id,
                number=a.number,
                status=AttemptStatus(a.status),
                worker_id=a.worker_id,
                output=a.output,
                error=Failure.from_json(a.error),
                progress=a.progress,
                created_at=a.created_at,
                started_at=a.started_at,
                ended_at=a.ended_at,
            )
        )
    steps = tuple(
        StepView(
            name=s.name,
            status=StepStatus(s.status),
            output=s.output,
            error=Failure.from_json(s.error),
            created_at=s.created_at,
            ended_at=s.ended_at,
            attempts=tuple(attempts.get(s.name, ())),
        )
        for s in step_rows
    )
    children = tuple(
        ChildView(
            run_id=uuid.UUID(c["id"]),
            workflow_name=c["workflow"],
            key=handler_key(c["key"], row.id) or "",
            parent_step=c["step"] or "",
            status=RunStatus(c["status"]),
        )
        for c in row.children
    )
    return replace(_run(row, steps), children=children)


_CHILDREN = (
    "(SELECT coalesce(jsonb_agg(jsonb_build_object('id', c.id, 'workflow', c.workflow_name, "
    "'key', c.idempotency_key, 'step', c.parent_step, 'status', c.status) "
    "ORDER BY c.created_at, c.id), '[]'::jsonb) FROM runs c "
    "WHERE c.parent_run_id = runs.id) AS children"
)
"""The run's children, oldest first, in the run's own row (index runs_parent_created)."""


def _run(row: Any, steps: tuple[StepView, ...]) -> RunView:
    return RunView(
        id=row.id,
        workflow_name=row.workflow_name,
        workflow_version=row.workflow_version,
        trigger=row.trigger,
        status=RunStatus(row.status),
        payload=row.payload,
        context=row.context,
        error=Failure.from_json(row.error),
        idempotency_key=handler_key(row.idempotency_key, row.parent_run_id),
        source_run_id=row.source_run_id,
        parent_run_id=row.parent_run_id,
        parent_step=row.parent_step,
        last_seq=row.last_seq,
        created_at=row.created_at,
        started_at=row.started_at,
        ended_at=row.ended_at,
        updated_at=row.updated_at,
        steps=steps,
        schedule=(
            ScheduleOrigin(
                row.schedule_id,
                row.schedule_nominal_at,
                row.schedule_fired_at,
                ScheduleRunOrigin(row.schedule_origin),
            )
            if row.schedule_id is not None
            else None
        ),
    )


async def workflow_id_of(conn: Connection, run_id: uuid.UUID) -> int | None:
    workflow_id = (
        await conn.execute(("SELECT workflow_id FROM runs WHERE id = :id"), {"id": run_id})
    ).scalar()
    return int(workflow_id) if workflow_id is not None else None


@dataclass(frozen=True)
class RunFilter:
    workflow: str = ""
    statuses: tuple[RunStatus, ...] = ()
    trigger: str = ""
    created_after: datetime | None = None
    created_before: datetime | None = None
    parent_run_id: uuid.UUID | None = None
    """Only the children of this run."""
    schedule_id: str = ""
    """Only the runs this schedule started (and replays of them)."""


_BASIC_RUN_COLUMNS = (
    "id, workflow_name, workflow_version, trigger, status, '{}'::jsonb AS payload, "
    "'{}'::jsonb AS context, error - 'details' AS error, idempotency_key, source_run_id, "
    "parent_run_id, parent_step, last_seq, created_at, started_at, ended_at, updated_at, "
    + _SCHEDULE_COLUMNS
)
"""A run without its data: no payload, no context, no error details (ListRuns' basic view)."""

_LIVE_STEPS = (
    "ARRAY(SELECT s.name FROM steps s WHERE s.run_id = runs.id AND s.status = ANY(:live) "
    "ORDER BY s.position, s.created_at) AS live_steps"
)


async def list_page(
    conn: Connection,
    where: RunFilter,
    cursor: tuple[datetime, uuid.UUID] | None,
    limit: int,
    *,
    full: bool = False,
) -> list[RunView]:
    """Newest first; `cursor` is the (created_at, id) of the last run of the previous page.
    Each run has its current steps but no steps; `full` adds its payload, context and error
    details."""
    clauses = ["TRUE"]
    params: dict[str, Any] = {"limit": limit, "live": [s.value for s in LIVE_STEP_STATUSES]}
    if where.workflow:
        clauses.append("workflow_name = :workflow")
        params["workflow"] = where.workflow
    if where.statuses:
        clauses.append("status = ANY(:statuses)")
        params["statuses"] = [s.value for s in where.statuses]
    if where.trigger:
        clauses.append("trigger = :trigger")
        params["trigger"] = where.trigger
    if where.created_after is not None:
        clauses.append("created_at >= :after")
        params["after"] = where.created_after
    if where.created_before is not None:
        clauses.append("created_at < :before")
        params["before"] = where.created_before
    if where.parent_run_id is not None:
        clauses.append("parent_run_id = :parent")
        params["parent"] = where.parent_run_id
    if where.schedule_id:
        clauses.append("schedule_id = :schedule")
        params["schedule"] = where.schedule_id
    if cursor is not None:
        clauses.append("(created_at, id) < (:cursor_time, :cursor_id)")
        params["cursor_time"], params["cursor_id"] = cursor
    rows = await conn.execute(
        (
            f"SELECT {_RUN_COLUMNS if full else _BASIC_RUN_COLUMNS}, {_LIVE_STEPS} "
            f"FROM runs WHERE {' AND '.join(clauses)} "
            "ORDER BY created_at DESC, id DESC LIMIT :limit"
        ),
        params,
    )
    return [replace(_run(r, ()), live_steps=tuple(r.live_steps)) for r in rows]


async def completed_steps(conn: Connection, run_id: uuid.UUID) -> list[str]:
    """The steps the run completed, in completion order (of their step_completed events)."""
    rows = await conn.execute(
        "SELECT step_name FROM run_events WHERE run_id = :id AND type = 'step_completed' "
        "ORDER BY seq",
        {"id": run_id},
    )
    return [r.step_name for r in rows]


async def step_output(conn: Connection, run_id: uuid.UUID, name: str) -> JSON:
    return (
        await conn.execute(
            "SELECT output FROM steps WHERE run_id = :id AND name = :name",
            {"id": run_id, "name": name},
        )
    ).scalar()


async def compensations(
    conn: Connection, run_id: uuid.UUID
) -> list[tuple[str, StepStatus, dict[str, JSON] | None]]:
    """(name, status, error) of the run's compensation steps, in the order they started."""
    rows = await conn.execute(
        "SELECT name, status, error FROM steps WHERE run_id = :id AND name LIKE :pattern "
        "ORDER BY created_at, position",
        {"id": run_id, "pattern": "%" + COMPENSATION_SUFFIX},
    )
    return [(r.name, StepStatus(r.status), r.error) for r in rows]
