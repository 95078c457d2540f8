"""What ExplainRun decides from, read in one statement (one round trip, one snapshot): the run,
its steps, the latest attempt of each live step, its open waits, its child runs, the workers
that serve the queues of its scheduled attempts or run its attempts, and the database's clock.

Each part is an index lookup on the run's id (steps_pkey, attempts' (run_id, step_name,
number), run_events_pkey, waits_pkey, runs_parent_created), or the small workers table."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from server.engine.explanation import (
    AttemptFacts,
    ChildFacts,
    RunFacts,
    StepFacts,
    WaitFacts,
    WorkerFacts,
)
from server.engine.model import (
    LIVE_STEP_STATUSES,
    AttemptKind,
    AttemptStatus,
    Failure,
    RunStatus,
    StepStatus,
)
from server.store.db import Connection
from server.store.runs import child_key
from server.store.workers import live_sql, slots_used_sql

# `status_since`: the first event after the last one recorded under another status (both
# found walking run_events_pkey from one end, so a run with a long log costs no more).
_FACTS = f"""
WITH r AS (
  SELECT id, workflow_id, status, error, created_at, ended_at FROM runs WHERE id = :id
), s AS (
  SELECT name, status, attempt_count, error, created_at, ended_at, position
  FROM steps WHERE run_id = :id
), a AS (
  SELECT DISTINCT ON (a.step_name) a.step_name, a.number, a.status, a.kind, a.queue,
    a.handler, a.worker_id, a.created_at, a.due_at, a.kicked_at, a.kick_count, a.started_at,
    a.lease_expires_at, a.deadline_at, a.progress, a.declined_noted_at
  FROM attempts a JOIN s ON s.name = a.step_name
  WHERE a.run_id = :id AND s.status = ANY(:live_steps)
  ORDER BY a.step_name, a.number DESC
), w AS (
  SELECT w.id, w.queues, w.handlers, w.concurrency, w.last_seen_at, {live_sql()} AS live,
    {slots_used_sql()} AS slots_used
  FROM workers w
  WHERE w.queues && ARRAY(SELECT a.queue FROM a WHERE a.status = 'scheduled' AND a.kind = 'task')
    OR w.id IN (SELECT a.worker_id FROM a WHERE a.status = 'running')
)
SELECT r.id, r.workflow_id, r.status, r.error, r.created_at, r.ended_at, now() AS now,
  coalesce((SELECT e.created_at FROM run_events e WHERE e.run_id = :id AND e.seq > coalesce(
      (SELECT x.seq FROM run_events x WHERE x.run_id = :id AND x.run_status <> r.status
       ORDER BY x.seq DESC LIMIT 1), 0)
    ORDER BY e.seq LIMIT 1), r.created_at) AS status_since,
  (SELECT coalesce(jsonb_agg(to_jsonb(s) ORDER BY s.position, s.created_at), '[]') FROM s)
    AS steps,
  (SELECT coalesce(jsonb_agg(to_jsonb(a) || jsonb_build_object(
      'previous_error', (SELECT p.error FROM attempts p WHERE p.run_id = :id
                         AND p.step_name = a.step_name AND p.number = a.number - 1),
      'declined_by', CASE WHEN a.declined_noted_at IS NOT NULL THEN
        (SELECT e.data ->> 'worker_id' FROM run_events e WHERE e.run_id = :id
         AND e.type = 'attempt_declined' AND e.step_name = a.step_name
         AND e.attempt_number = a.number ORDER BY e.seq DESC LIMIT 1) END)), '[]') FROM a)
    AS attempts,
  (SELECT coalesce(jsonb_agg(to_jsonb(x)), '[]') FROM waits x
   WHERE x.run_id = :id AND x.resolved_at IS NULL) AS waits,
  (SELECT coalesce(jsonb_agg(to_jsonb(w)), '[]') FROM w) AS workers,
  (SELECT coalesce(jsonb_agg(jsonb_build_object('id', c.id, 'workflow', c.workflow_name,
      'status', c.status, 'key', c.idempotency_key, 'parent_step', c.parent_step)), '[]')
   FROM runs c WHERE c.parent_run_id = :id) AS children,
  CASE WHEN r.status IN ('cancelling', 'cancelled') THEN
    (SELECT e.data FROM run_events e WHERE e.run_id = :id AND e.type = 'cancel_requested'
     ORDER BY e.seq DESC LIMIT 1) END AS cancel
FROM r
"""


async def run_facts(conn: Connection, run_id: uuid.UUID, live_ms: int) -> RunFacts | None:
    """The facts about a run; None when it does not exist. A worker is live when its stream is
    open and it was heard from within `live_ms`."""
    row = (
        await conn.execute(
            _FACTS,
            {
                "id": run_id,
                "live_steps": [s.value for s in LIVE_STEP_STATUSES],
                "live_ms": live_ms,
            },
        )
    ).first()
    if row is None:
        return None
    return RunFacts(
        id=str(row.id),
        workflow_id=row.workflow_id,
        status=RunStatus(row.status),
        error=Failure.from_json(row.error),
        created_at=row.created_at,
        ended_at=row.ended_at,
        status_since=row.status_since,
        now=row.now,
        steps=tuple(_step(s) for s in row.steps),
        attempts={a["step_name"]: _attempt(a) for a in row.attempts},
        waits={w["step_name"]: _wait(w) for w in row.waits},
        workers=tuple(_worker(w) for w in row.workers),
        children=tuple(
            ChildFacts(
                run_id=str(c["id"]),
                workflow=c["workflow"],
                status=RunStatus(c["status"]),
                key=(c["key"] or "").removeprefix(child_key(run_id, "")),
                parent_step=c["parent_step"] or "",
            )
            for c in row.children
        ),
        cancel=row.cancel,
    )


def _time(value: str | None) -> datetime | None:
    """A timestamp as to_jsonb writes it (ISO 8601 with its offset)."""
    return datetime.fromisoformat(value) if value is not None else None


def _required_time(value: str) -> datetime:
    return datetime.fromisoformat(value)


def _step(s: dict[str, Any]) -> StepFacts:
    return StepFacts(
        name=s["name"],
        status=StepStatus(s["status"]),
        attempt_count=s["attempt_count"],
        created_at=_required_time(s["created_at"]),
        ended_at=_time(s["ended_at"]),
        error=Failure.from_json(s["error"]),
    )


def _attempt(a: dict[str, Any]) -> AttemptFacts:
    return AttemptFacts(
        step=a["step_name"],
        number=a["number"],
        status=AttemptStatus(a["status"]),
        kind=AttemptKind(a["kind"]),
        queue=a["queue"],
        handler=a["handler"],
        worker_id=a["worker_id"],
        created_at=_required_time(a["created_at"]),
        due_at=_required_time(a["due_at"]),
        kicked_at=_time(a["kicked_at"]),
        kick_count=a["kick_count"],
        started_at=_time(a["started_at"]),
        lease_expires_at=_time(a["lease_expires_at"]),
        deadline_at=_time(a["deadline_at"]),
        progress=a["progress"],
        previous_error=Failure.from_json(a["previous_error"]),
        declined_at=_time(a["declined_noted_at"]),
        declined_by=a["declined_by"] or "",
    )


def _wait(w: dict[str, Any]) -> WaitFacts:
    return WaitFacts(
        step=w["step_name"],
        kind=w["kind"],
        event_name=w["event_name"] or "",
        correlation_key=w["correlation_key"] or "",
        deadline_at=_time(w["deadline_at"]),
        votes=tuple(w["votes"] or ()),
        created_at=_required_time(w["created_at"]),
    )


def _worker(w: dict[str, Any]) -> WorkerFacts:
    return WorkerFacts(
        id=w["id"],
        queues=frozenset(w["queues"]),
        handlers=frozenset(w["handlers"]),
        slots_used=int(w["slots_used"]),
        slots_total=w["concurrency"],
        live=bool(w["live"]),
        last_seen_at=_required_time(w["last_seen_at"]),
    )
