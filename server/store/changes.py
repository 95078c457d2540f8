"""One statement that applies everything a command decided about a run: step updates, new
steps and attempts, the run's new status and context, and its events (with NOTIFY).

Commands compute a `RunChange` in Python (pure engine logic) and write it here in a single
round trip; the event sequence is allocated under the run row's lock, so each run's log is
gap-free and commit-ordered. Watchers are woken after commit by `events.notifier`."""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from server.engine.model import ACTIVE_RUN_STATUSES, JSON, RunStatus
from server.store.db import Connection, dumps
from server.store.runs import NewRun

EVENTS_CHANNEL = "squidmesh_run_events"
TIMERS_CHANNEL = "squidmesh_timers"


@dataclass(frozen=True)
class StepUpdate:
    name: str
    status: str
    output: JSON = None
    error: dict[str, Any] | None = None
    ended: bool = False


@dataclass(frozen=True)
class NewStep:
    name: str
    position: int
    status: str


@dataclass(frozen=True)
class NewAttempt:
    id: uuid.UUID
    step_name: str
    number: int
    token: str
    queue: str
    handler: str
    heartbeat_timeout_ms: int
    delay_ms: int = 0
    """0: due now and published right after commit; otherwise a timer fires it."""


@dataclass(frozen=True)
class NewEvent:
    type: str
    step_name: str | None = None
    attempt_number: int | None = None
    data: dict[str, JSON] = field(default_factory=dict)


@dataclass
class RunChange:
    run_id: uuid.UUID
    status: RunStatus | None = None
    context: dict[str, JSON] | None = None
    error: dict[str, Any] | None = None
    started: bool = False
    ended: bool = False
    cancel_scheduled_attempts: bool = False
    step_updates: list[StepUpdate] = field(default_factory=list)
    new_steps: list[NewStep] = field(default_factory=list)
    new_attempts: list[NewAttempt] = field(default_factory=list)
    events: list[NewEvent] = field(default_factory=list)


# The parts of a run change as CTEs; {guard} gates each (see `apply_if_current`, `start`).
_NEW_ROWS = """
ns AS (
  INSERT INTO steps (run_id, name, position, status)
  SELECT :run_id, x.name, x.position, x.status
  FROM jsonb_to_recordset(CAST(:new_steps AS jsonb)) AS x(name text, position int, status text)
  WHERE {guard}
  RETURNING 1
), na AS (
  INSERT INTO attempts (id, run_id, step_name, number, token, status, queue, handler,
                        heartbeat_timeout_ms, due_at, kicked_at)
  SELECT x.id, :run_id, x.step_name, x.number, x.token, 'scheduled', x.queue, x.handler,
         x.heartbeat_timeout_ms, now() + x.delay_ms * interval '1 millisecond',
         CASE WHEN x.delay_ms = 0 THEN now() END
  FROM jsonb_to_recordset(CAST(:new_attempts AS jsonb)) AS x(
    id uuid, step_name text, number int, token text, queue text, handler text,
    heartbeat_timeout_ms int, delay_ms bigint)
  WHERE {guard}
  RETURNING 1
)"""

_CHANGE_CTES = (
    """
su AS (
  UPDATE steps SET
    status = x.status,
    output = coalesce(x.output, steps.output),
    error = coalesce(x.error, steps.error),
    ended_at = CASE WHEN x.ended THEN now() ELSE steps.ended_at END
  FROM jsonb_to_recordset(CAST(:step_updates AS jsonb))
    AS x(name text, status text, output jsonb, error jsonb, ended bool)
  WHERE steps.run_id = :run_id AND steps.name = x.name AND {guard}
  RETURNING 1
),"""
    + _NEW_ROWS
    + """, ca AS (
  UPDATE attempts SET status = 'cancelled', ended_at = now()
  WHERE :cancel_scheduled AND run_id = :run_id AND status = 'scheduled' AND {guard}
  RETURNING 1
), r AS (
  UPDATE runs SET
    status = coalesce(:status, status),
    context = coalesce(CAST(:context AS jsonb), context),
    error = coalesce(CAST(:error AS jsonb), error),
    started_at = CASE WHEN :started THEN coalesce(started_at, now()) ELSE started_at END,
    ended_at = CASE WHEN :ended THEN now() ELSE ended_at END,
    last_seq = last_seq + :n_events,
    updated_at = now()
  WHERE id = :run_id AND {guard}
  RETURNING last_seq, status
), e AS (
  INSERT INTO run_events (run_id, seq, type, run_status, step_name, attempt_number, data)
  SELECT :run_id, r.last_seq - :n_events + x.ord, x.type, r.status, x.step_name,
         x.attempt_number, coalesce(x.data, '{}'::jsonb)
  FROM r, jsonb_to_recordset(CAST(:events AS jsonb))
    AS x(ord int, type text, step_name text, attempt_number int, data jsonb)
  RETURNING 1
)"""
)

# A new run with its first change (entry steps, events) in one statement. The run row is
# inserted here, so the change's rows are inserted outright rather than applied to it; an
# idempotency key already taken writes nothing.
_START = (
    """WITH ins AS (
  INSERT INTO runs (id, workflow_id, workflow_name, workflow_version, trigger, status, payload,
                    context, payload_hash, idempotency_key, source_run_id, last_seq)
  VALUES (:run_id, :workflow_id, :workflow_name, :workflow_version, :trigger, 'pending',
          CAST(:payload AS jsonb), CAST(:payload AS jsonb), :payload_hash, :idempotency_key,
          :source_run_id, :n_events)
  ON CONFLICT (workflow_name, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
  RETURNING created_at
),"""
    + _NEW_ROWS.replace("{guard}", "EXISTS (SELECT 1 FROM ins)")
    + """, e AS (
  INSERT INTO run_events (run_id, seq, type, run_status, step_name, attempt_number, data)
  SELECT :run_id, x.ord, x.type, 'pending', x.step_name, x.attempt_number,
         coalesce(x.data, '{}'::jsonb)
  FROM ins, jsonb_to_recordset(CAST(:events AS jsonb))
    AS x(ord int, type text, step_name text, attempt_number int, data jsonb)
  RETURNING 1
)
SELECT created_at FROM ins"""
)

_APPLY = "WITH " + _CHANGE_CTES.replace("{guard}", "TRUE") + " SELECT count(*) FROM e"

# A whole "attempt succeeded" command in one statement, decided from the run as the claim saw
# it: the run row is locked and must still be at the claim's event sequence (nothing else
# happened to the run since), and the attempt must still be running with this token.
# Otherwise nothing is written and the caller takes the general path.
_APPLY_IF_CURRENT = (
    """WITH r0 AS (
  SELECT id FROM runs
  WHERE id = :run_id AND last_seq = :expected_seq AND status = ANY(:active)
  FOR UPDATE
), fin AS (
  UPDATE attempts SET status = 'succeeded', ended_at = now(), output = CAST(:output AS jsonb),
    lease_expires_at = NULL
  WHERE id = :attempt_id AND token = :token AND status = 'running'
    AND EXISTS (SELECT 1 FROM r0)
  RETURNING 1
), """
    + _CHANGE_CTES.replace("{guard}", "EXISTS (SELECT 1 FROM fin)")
    + " SELECT (SELECT count(*) FROM fin) AS applied, (SELECT count(*) FROM e) AS events"
)


async def apply(conn: Connection, change: RunChange) -> None:
    """Writes `change` in one statement."""
    await conn.send(_APPLY, _params(change))


async def apply_if_current(
    conn: Connection,
    change: RunChange,
    *,
    attempt_id: uuid.UUID,
    token: str,
    output: JSON,
    expected_seq: int,
) -> bool:
    """Records a succeeded attempt and writes `change` in one statement, if the run is still at
    `expected_seq` and active and the attempt still running; False (nothing written) otherwise."""
    params = _params(change) | {
        "attempt_id": attempt_id,
        "token": token,
        "output": dumps(output),
        "expected_seq": expected_seq,
        "active": [s.value for s in ACTIVE_RUN_STATUSES],
    }
    row = (await conn.execute(_APPLY_IF_CURRENT, params)).one()
    return bool(row.applied)


async def start(conn: Connection, run: NewRun, change: RunChange) -> datetime | None:
    """Inserts a pending run with its first change; returns its creation time, or None when
    its idempotency key is already taken (nothing written)."""
    params = _params(change) | {
        "workflow_id": run.workflow_id,
        "workflow_name": run.workflow_name,
        "workflow_version": run.workflow_version,
        "trigger": run.trigger,
        "payload": dumps(run.payload),
        "payload_hash": run.payload_hash,
        "idempotency_key": run.idempotency_key,
        "source_run_id": run.source_run_id,
    }
    row = (await conn.execute(_START, params)).first()
    return row.created_at if row is not None else None


def _params(change: RunChange) -> dict[str, Any]:
    events = [{"ord": i + 1, **asdict(e)} for i, e in enumerate(change.events)]
    return {
        "run_id": change.run_id,
        "status": change.status.value if change.status else None,
        "context": dumps(change.context) if change.context is not None else None,
        "error": dumps(change.error) if change.error is not None else None,
        "started": change.started,
        "ended": change.ended,
        "cancel_scheduled": change.cancel_scheduled_attempts,
        "step_updates": dumps([asdict(s) for s in change.step_updates]),
        "new_steps": dumps([asdict(s) for s in change.new_steps]),
        "new_attempts": dumps([{**asdict(a), "id": str(a.id)} for a in change.new_attempts]),
        "events": dumps(events),
        "n_events": len(events),
    }
