"""Attempts: claim under a lease, record results, heartbeats, and the timer/reconciler scans.
Every state change is a conditional update on the attempt's id, token and status (fencing)."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from server.engine.model import ACTIVE_RUN_STATUSES, JSON, AttemptKind, AttemptStatus, RunStatus
from server.engine.views import Dispatch
from server.store.db import Connection, dumps
from server.store.runs import RUN_LOCK_COLUMNS, LockedRun, locked_run

_ACTIVE = [s.value for s in ACTIVE_RUN_STATUSES]


@dataclass(frozen=True)
class Claimed:
    run_id: uuid.UUID
    workflow_id: int
    workflow_name: str
    step_name: str
    number: int
    handler: str
    heartbeat_timeout_ms: int
    attempt_timeout_ms: int | None
    context: dict[str, JSON]
    last_seq: int
    """The run's event sequence right after the claim."""
    parent_run_id: uuid.UUID | None = None
    """A child run's parent (woken when the run ends)."""


# One round trip for a batch of claims: claim each attempt (only while scheduled and its run
# active), mark its step and run running (a compensating run stays compensating), set the
# attempt's deadline when it has a timeout, and append one attempt_started event per claim with
# sequence numbers allocated per run. The worker id of each row tells which request won when
# two workers claim the same attempt in one batch.
_CLAIM = """
WITH req AS (
  SELECT * FROM unnest(CAST(:ids AS uuid[]), CAST(:tokens AS text[]), CAST(:workers AS text[]))
    AS q(id, token, worker_id)
), a AS (
  UPDATE attempts SET status = 'running', worker_id = req.worker_id, started_at = now(),
    lease_expires_at = now() + heartbeat_timeout_ms * interval '1 millisecond',
    deadline_at = now() + attempt_timeout_ms * interval '1 millisecond'
  FROM req
  WHERE attempts.id = req.id AND attempts.token = req.token AND attempts.status = 'scheduled'
    AND attempts.kind = 'task' AND EXISTS (SELECT 1 FROM runs WHERE runs.id = attempts.run_id
                AND runs.status = ANY(:active))
  RETURNING attempts.id, attempts.run_id, attempts.step_name, attempts.number,
    attempts.handler, attempts.heartbeat_timeout_ms, attempts.attempt_timeout_ms, req.worker_id
), s AS (
  UPDATE steps SET status = 'running' FROM a
  WHERE steps.run_id = a.run_id AND steps.name = a.step_name
  RETURNING 1
), per_run AS (
  SELECT run_id, count(*) AS k FROM a GROUP BY run_id
), r AS (
  UPDATE runs SET status = CASE WHEN runs.status = 'compensating' THEN runs.status
                           ELSE 'running' END,
    started_at = coalesce(started_at, now()),
    last_seq = last_seq + per_run.k, updated_at = now()
  FROM per_run WHERE runs.id = per_run.run_id
  RETURNING runs.id, runs.workflow_id, runs.workflow_name, runs.context, runs.last_seq,
    runs.status, runs.parent_run_id, per_run.k
), o AS (
  SELECT a.*, row_number() OVER (PARTITION BY a.run_id ORDER BY a.id) AS i FROM a
), e AS (
  INSERT INTO run_events (run_id, seq, type, run_status, step_name, attempt_number, data)
  SELECT r.id, r.last_seq - r.k + o.i, 'attempt_started', r.status, o.step_name, o.number,
    jsonb_build_object('worker_id', o.worker_id)
  FROM o JOIN r ON r.id = o.run_id
  RETURNING 1
)
SELECT o.id, o.worker_id, o.run_id, r.workflow_id, r.workflow_name, o.step_name, o.number,
  o.handler, o.heartbeat_timeout_ms, o.attempt_timeout_ms, r.context, r.last_seq,
  r.parent_run_id, (SELECT count(*) FROM s) + (SELECT count(*) FROM e) AS n
FROM o JOIN r ON r.id = o.run_id
"""


async def claim(
    conn: Connection, requests: list[tuple[uuid.UUID, str, str]]
) -> dict[tuple[uuid.UUID, str], Claimed]:
    """Claims (attempt id, token, worker id) requests; the claimed ones by (attempt id, worker)."""
    rows = await conn.execute(
        _CLAIM,
        {
            "ids": [attempt_id for attempt_id, _, _ in requests],
            "tokens": [token for _, token, _ in requests],
            "workers": [worker for _, _, worker in requests],
            "active": _ACTIVE,
        },
    )
    return {(row.id, row.worker_id): _claimed(row) for row in rows}


_CLAIMED_COLUMNS = (
    "a.run_id, a.step_name, a.number, a.handler, a.heartbeat_timeout_ms, "
    "a.attempt_timeout_ms, r.workflow_id, r.workflow_name, r.context, r.last_seq, "
    "r.parent_run_id"
)
"""The columns `_claimed` reads, from attempts aliased as a joined to its run as r."""


def _claimed(row: Any) -> Claimed:
    return Claimed(
        run_id=row.run_id,
        workflow_id=row.workflow_id,
        workflow_name=row.workflow_name,
        step_name=row.step_name,
        number=row.number,
        handler=row.handler,
        heartbeat_timeout_ms=row.heartbeat_timeout_ms,
        attempt_timeout_ms=row.attempt_timeout_ms,
        context=row.context,
        last_seq=row.last_seq,
        parent_run_id=row.parent_run_id,
    )


@dataclass(frozen=True)
class AttemptState:
    token: str
    status: AttemptStatus
    worker_id: str | None
    run_status: RunStatus
    is_latest: bool
    claimed: Claimed


async def state(conn: Connection, attempt_id: uuid.UUID) -> AttemptState | None:
    """Why a claim or result did not apply (off the hot path)."""
    row = (
        await conn.execute(
            (
                f"SELECT a.token, a.status, a.worker_id, {_CLAIMED_COLUMNS}, "
                "r.status AS run_status, NOT EXISTS (SELECT 1 FROM attempts b "
                "WHERE b.run_id = a.run_id AND b.step_name = a.step_name "
                "AND b.number > a.number) AS is_latest "
                "FROM attempts a JOIN runs r ON r.id = a.run_id WHERE a.id = :id"
            ),
            {"id": attempt_id},
        )
    ).first()
    if row is None:
        return None
    return AttemptState(
        token=row.token,
        status=AttemptStatus(row.status),
        worker_id=row.worker_id,
        run_status=RunStatus(row.run_status),
        is_latest=row.is_latest,
        claimed=_claimed(row),
    )


@dataclass(frozen=True)
class Handed:
    """An attempt handed over to a worker (see `server.engine.handoff`), as the run is now."""

    id: uuid.UUID
    token: str
    claimed: Claimed
    retry_delay_ms: int | None
    """For a retry handed back (not claimed yet): what is left of its backoff."""


async def handed_off(
    conn: Connection, run_id: uuid.UUID, from_attempt: uuid.UUID, worker_id: str
) -> Handed | None:
    """The attempt the answer to `from_attempt`'s result handed over to `worker_id`, while it
    is still running there, or still waits to be claimed (a retry handed back)."""
    row = (
        await conn.execute(
            (
                f"SELECT a.id, a.token, {_CLAIMED_COLUMNS}, CASE WHEN a.status = 'scheduled' "
                "THEN greatest(0, ceil(extract(epoch FROM a.due_at - now()) * 1000)) "
                "END AS retry_delay_ms "
                "FROM attempts a JOIN runs r ON r.id = a.run_id "
                "WHERE a.run_id = :run_id AND a.handoff_from = :from_attempt "
                "AND ((a.worker_id = :worker_id AND a.status = 'running') "
                "OR a.status = 'scheduled')"
            ),
            {"run_id": run_id, "from_attempt": from_attempt, "worker_id": worker_id},
        )
    ).first()
    if row is None:
        return None
    delay = row.retry_delay_ms
    return Handed(
        id=row.id,
        token=row.token,
        claimed=_claimed(row),
        retry_delay_ms=None if delay is None else int(delay),
    )


@dataclass(frozen=True)
class Finished:
    run: LockedRun
    step_name: str
    number: int
    past_deadline: bool
    """The attempt ended after its deadline (whatever the worker reported)."""


class Expired(enum.Enum):
    """Which limit a running attempt must have passed for `finish` to end it."""

    LEASE = "lease_expires_at"
    DEADLINE = "deadline_at"


async def finish(
    conn: Connection,
    attempt_id: uuid.UUID,
    token: str,
    status: AttemptStatus,
    *,
    output: JSON = None,
    error: dict[str, Any] | None = None,
    expired: Expired | None = None,
    wait: bool = False,
    reporter: str | None = None,
) -> Finished | None:
    """Ends a running attempt, or with `wait` a scheduled wait timer (fenced), and locks its
    run for the decision that follows. With `reporter`, only if that worker claimed it."""
    condition = "status = 'scheduled' AND kind = 'wait'" if wait else "status = 'running'"
    if expired is not None:
        condition += f" AND {expired.value} < now()"
    if reporter is not None:
        condition += " AND worker_id = :reporter"
    row = (
        await conn.execute(
            (
                "WITH a AS (UPDATE attempts SET status = :status, ended_at = now(), "
                "started_at = coalesce(started_at, now()), "
                "output = CAST(:output AS jsonb), error = CAST(:error AS jsonb), "
                "lease_expires_at = NULL "
                f"WHERE id = :id AND token = :token AND {condition} "
                "RETURNING run_id, step_name, number, "
                "coalesce(deadline_at <= now(), false) AS past_deadline) "
                f"SELECT {RUN_LOCK_COLUMNS}, a.step_name, a.number, a.past_deadline "
                "FROM a JOIN runs r ON r.id = a.run_id FOR UPDATE OF r"
            ),
            {
                "id": attempt_id,
                "token": token,
                "status": status.value,
                "output": dumps(output),
                "error": dumps(error) if error is not None else None,
                "reporter": reporter,
            },
        )
    ).first()
    if row is None:
        return None
    return Finished(
        run=locked_run(row),
        step_name=row.step_name,
        number=row.number,
        past_deadline=row.past_deadline,
    )


@dataclass(frozen=True)
class Noted:
    """An attempt event to record in its run's log (a progress change, a decline)."""

    run_id: uuid.UUID
    step_name: str
    number: int
    data: dict[str, JSON]


NOTE_EVERY = "interval '1 second'"
"""How often at most a progress change, or a decline, of one attempt becomes a run event."""


async def heartbeat(
    conn: Connection, worker_id: str, beats: list[tuple[uuid.UUID, str, JSON]]
) -> list[tuple[str, bool, Noted | None]]:
    """Renews the leases of running attempts; returns (attempt id, run is cancelling, progress
    to record) for the attempts that are still this worker's. The lease of an attempt whose run
    is cancelling is not renewed: a handler that ignores the cancel is ended when it expires.
    Progress is to be recorded when it changed, and not within a second of the last one."""
    rows = await conn.execute(
        (
            "WITH w AS (UPDATE workers SET last_seen_at = now() WHERE id = :worker_id "
            "RETURNING 1) "
            "UPDATE attempts a SET lease_expires_at = CASE WHEN r.status = 'cancelling' "
            "THEN a.lease_expires_at ELSE now() + a.heartbeat_timeout_ms "
            "* interval '1 millisecond' END, progress = coalesce(x.details, a.progress), "
            "progress_noted_at = CASE WHEN x.note THEN now() ELSE a.progress_noted_at END "
            "FROM (SELECT b.*, b.details IS NOT NULL AND b.details IS DISTINCT FROM o.progress "
            f"AND (o.progress_noted_at IS NULL OR o.progress_noted_at <= now() - {NOTE_EVERY}) "
            "AS note FROM jsonb_to_recordset(CAST(:beats AS jsonb)) "
            "AS b(id uuid, token text, details jsonb) JOIN attempts o ON o.id = b.id) x, runs r "
            "WHERE a.id = x.id AND a.token = x.token AND a.status = 'running' "
            "AND a.worker_id = :worker_id AND r.id = a.run_id "
            "RETURNING a.id, r.status = 'cancelling' AS cancel, (SELECT count(*) FROM w) AS n, "
            "x.note, a.run_id, a.step_name, a.number, a.progress"
        ),
        {
            "worker_id": worker_id,
            "beats": dumps([{"id": str(i), "token": t, "details": d} for i, t, d in beats]),
        },
    )
    return [
        (
            str(r.id),
            bool(r.cancel),
            Noted(r.run_id, r.step_name, r.number, {"progress": r.progress}) if r.note else None,
        )
        for r in rows
    ]


async def decline(
    conn: Connection,
    attempt_id: uuid.UUID,
    token: str,
    worker_id: str,
    first_ms: int,
    max_ms: int,
) -> tuple[int, Noted | None] | None:
    """Makes a published task attempt that a worker gave back a timer again, due after
    `first_ms` doubled for each time a timer published it again, up to `max_ms`; returns that
    delay, and the decline to record unless one was within the last second. None when the
    attempt is no longer published and unclaimed."""
    row = (
        await conn.execute(
            (
                "WITH d AS (SELECT id, least(:max_ms, :first_ms * power(2, "
                "least(kick_count, 30)))::bigint AS ms, (declined_noted_at IS NULL OR "
                f"declined_noted_at <= now() - {NOTE_EVERY}) AS note FROM attempts "
                "WHERE id = :id AND token = :token AND status = 'scheduled' AND kind = 'task' "
                "AND kicked_at IS NOT NULL FOR UPDATE) "
                "UPDATE attempts a SET kicked_at = NULL, "
                "due_at = now() + d.ms * interval '1 millisecond', "
                "declined_noted_at = CASE WHEN d.note THEN now() ELSE a.declined_noted_at END "
                "FROM d WHERE a.id = d.id "
                "RETURNING d.ms, d.note, a.run_id, a.step_name, a.number, a.queue, a.handler"
            ),
            {"id": attempt_id, "token": token, "first_ms": first_ms, "max_ms": max_ms},
        )
    ).first()
    if row is None:
        return None
    noted = None
    if row.note:
        data: dict[str, JSON] = {
            "worker_id": worker_id,
            "handler": row.handler,
            "queue": row.queue,
            "retry_in_ms": int(row.ms),
        }
        noted = Noted(row.run_id, row.step_name, row.number, data)
    return int(row.ms), noted


@dataclass(frozen=True)
class Due:
    tasks: list[Dispatch]
    """Task attempts to publish."""
    waits: list[tuple[uuid.UUID, str]]
    """(id, token) of wait timers to complete."""


async def kick_due(conn: Connection, limit: int = 500) -> Due:
    """Marks as kicked the timers that are due: scheduled attempts never kicked whose due time
    came (a retry whose backoff ended, a wait that ended)."""
    return await _kick(conn, "kicked_at IS NULL AND due_at <= now()", {"limit": limit})


async def kick_lost(conn: Connection, dispatch_timeout_ms: int, limit: int = 500) -> Due:
    """Marks as kicked again the scheduled attempts kicked longer ago than the dispatch timeout
    without effect: a task lost in Redis or in a server that crashed between commit and
    publish, a wait whose server crashed before completing it."""
    return await _kick(
        conn,
        "kicked_at < now() - :timeout * interval '1 millisecond'",
        {"timeout": dispatch_timeout_ms, "limit": limit},
    )


async def kick_unclaimed(conn: Connection, published_before: datetime, limit: int = 500) -> Due:
    """Marks as kicked again the task attempts published before `published_before` and not
    claimed, whose messages Redis lost (it restarted empty). A retry handed back to its worker
    and still in its backoff was never in Redis: it is left to its worker."""
    return await _kick(
        conn,
        "kind = 'task' AND kicked_at < :before AND due_at <= now()",
        {"before": published_before, "limit": limit},
    )


async def database_now(conn: Connection) -> datetime:
    """Postgres's clock, which `kicked_at` is on."""
    now: datetime = (await conn.execute("SELECT clock_timestamp()")).scalar()
    return now


async def _kick(conn: Connection, condition: str, params: dict[str, Any]) -> Due:
    rows = await conn.execute(
        (
            "UPDATE attempts SET kicked_at = now(), kick_count = kick_count + 1 "
            "WHERE id IN (SELECT id FROM attempts WHERE status = 'scheduled' "
            f"AND {condition} ORDER BY due_at LIMIT :limit FOR UPDATE SKIP LOCKED) "
            "RETURNING id, token, run_id, step_name, handler, queue, kind"
        ),
        params,
    )
    due = Due(tasks=[], waits=[])
    for row in rows:
        if row.kind == AttemptKind.WAIT:
            due.waits.append((row.id, row.token))
        else:
            due.tasks.append(_dispatch(row))
    return due


def _dispatch(row: Any) -> Dispatch:
    return Dispatch(
        attempt_id=row.id,
        token=row.token,
        run_id=row.run_id,
        step=row.step_name,
        handler=row.handler,
        queue=row.queue,
    )


@dataclass(frozen=True)
class NextTimers:
    """Milliseconds from now (negative: overdue), None when there is none."""

    due_ms: float | None
    """Until the earliest unkicked scheduled attempt is due (a retry's backoff, a wait), a
    gate's deadline passes, or a schedule's next tick fires."""
    deadline_ms: float | None
    """Until the earliest running attempt's deadline passes."""


async def next_timers(conn: Connection) -> NextTimers:
    row = (
        await conn.execute(
            # A gate's deadline is a timer too (`waits`); least() skips NULLs.
            "SELECT extract(epoch FROM least((SELECT min(due_at) FROM attempts "
            "  WHERE status = 'scheduled' AND kicked_at IS NULL), (SELECT min(deadline_at) "
            "  FROM waits WHERE resolved_at IS NULL AND deadline_at IS NOT NULL), "
            "  (SELECT min(next_due_at) FROM schedules "
            "   WHERE state = 'active' AND next_due_at IS NOT NULL)) - now()) "
            "  * 1000 AS due_ms, "
            "extract(epoch FROM (SELECT min(deadline_at) FROM attempts "
            "  WHERE status = 'running' AND deadline_at IS NOT NULL) - now()) * 1000 "
            "  AS deadline_ms"
        )
    ).one()
    return NextTimers(
        float(row.due_ms) if row.due_ms is not None else None,
        float(row.deadline_ms) if row.deadline_ms is not None else None,
    )


@dataclass(frozen=True)
class ExpiredAttempt:
    id: uuid.UUID
    token: str
    worker_id: str
    limit_ms: int
    """The lease (heartbeat timeout) or the attempt timeout that passed."""


async def expired(conn: Connection, limit: Expired, batch: int = 200) -> list[ExpiredAttempt]:
    """Running attempts whose lease expired or whose deadline passed."""
    limit_ms = "heartbeat_timeout_ms" if limit is Expired.LEASE else "attempt_timeout_ms"
    rows = await conn.execute(
        (
            f"SELECT id, token, worker_id, {limit_ms} AS limit_ms FROM attempts "
            f"WHERE status = 'running' AND {limit.value} < now() "
            f"ORDER BY {limit.value} LIMIT :batch"
        ),
        {"batch": batch},
    )
    return [ExpiredAttempt(r.id, r.token, r.worker_id, r.limit_ms) for r in rows]


async def running(conn: Connection, run_id: uuid.UUID) -> list[tuple[str, str]]:
    """(worker id, attempt id) of the run's running attempts."""
    rows = await conn.execute(
        "SELECT worker_id, id FROM attempts WHERE run_id = :id AND status = 'running'",
        {"id": run_id},
    )
    return [(r.worker_id, str(r.id)) for r in rows]


async def set_error(conn: Connection, attempt_id: uuid.UUID, error: dict[str, Any]) -> None:
    await conn.execute(
        "UPDATE attempts SET error = CAST(:error AS jsonb) WHERE id = :id",
        {"id": attempt_id, "error": dumps(error)},
    )
