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
    StepStatus,
)
from server.engine.views import AttemptView, RunView, StepView
from server.store.db import Connection

_RUN_COLUMNS = (
    "id, workflow_name, workflow_version, trigger, status, payload, context, error, "
    "idempotency_key, source_run_id, last_seq, created_at, started_at, ended_at, updated_at"
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


@dataclass(frozen=True)
class LockedRun:
    """The fields a decision needs, read under the run row's lock."""

    id: uuid.UUID
    workflow_id: int
    workflow_name: str
    status: RunStatus
    context: dict[str, JSON]
    error: dict[str, JSON] | None


RUN_LOCK_COLUMNS = "r.id, r.workflow_id, r.workflow_name, r.status, r.context, r.error"
"""The columns of a `LockedRun`, from the runs table aliased as r."""


@dataclass(frozen=True)
class KeyedRun:
    """What a StartRun with a taken idempotency key is compared with."""

    id: uuid.UUID
    trigger: str
    payload_hash: str


async def find_by_idempotency_key(
    conn: Connection, workflow_name: str, key: str
) -> KeyedRun | None:
    """The run started with this key (keys are unique per workflow)."""
    row = (
        await conn.execute(
            (
                "SELECT id, trigger, payload_hash FROM runs "
                "WHERE workflow_name = :name AND idempotency_key = :key"
            ),
            {"name": workflow_name, "key": key},
        )
    ).first()
    return KeyedRun(row.id, row.trigger, row.payload_hash) if row is not None else None


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
    )


CHILD_KEY_PREFIX = "child:"
"""A child run's idempotency key is "child:<parent run id>/<key>": unique within its parent
(the runs' key index is per workflow)."""


def child_key(parent_run_id: uuid.UUID, key: str) -> str:
    return f"{CHILD_KEY_PREFIX}{parent_run_id}/{key}"


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
            (f"SELECT {_RUN_COLUMNS}, workflow_id FROM runs WHERE id = :id"), {"id": run_id}
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
    return _run(row, steps)


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
        idempotency_key=row.idempotency_key,
        source_run_id=row.source_run_id,
        last_seq=row.last_seq,
        created_at=row.created_at,
        started_at=row.started_at,
        ended_at=row.ended_at,
        updated_at=row.updated_at,
        steps=steps,
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


_BASIC_RUN_COLUMNS = (
    "id, workflow_name, workflow_version, trigger, status, '{}'::jsonb AS payload, "
    "'{}'::jsonb AS context, error - 'details' AS error, idempotency_key, source_run_id, "
    "last_seq, created_at, started_at, ended_at, updated_at"
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
