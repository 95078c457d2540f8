"""One statement that applies everything a command decided about a run: step updates, new
steps and attempts, the run's new status and context, and its events (with NOTIFY).

Commands compute a `RunChange` in Python (pure engine logic) and write it here in a single
round trip; the event sequence is allocated under the run row's lock, so each run's log is
gap-free and commit-ordered. Watchers are woken after commit by `events.notifier`."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any

from server.engine.model import ACTIVE_RUN_STATUSES, JSON, RunStatus, ScheduleOrigin
from server.store.db import Connection, dumps
from server.store.runs import NewRun

EVENTS_CHANNEL = "squidmesh_run_events"
"""Payload: ids of runs with new events, comma-separated."""
TIMERS_CHANNEL = "squidmesh_timers"
STOPS_CHANNEL = "squidmesh_attempt_stops"
"""Payload: {"worker": id, "attempts": [ids], "reason": text}, for the replica that holds the
worker's attempt stream."""


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
    output: JSON = None
    error: dict[str, Any] | None = None
    ended: bool = False
    """A step that ends as it starts (a log step, or a step whose input is missing)."""


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
    kind: str = "task"
    """"task", or "wait": a timer, due after delay_ms, that the server completes itself."""
    attempt_timeout_ms: int | None = None
    worker_id: str | None = None
    """Set for an attempt handed off to this worker: inserted running, under its lease."""
    handoff_from: str | None = None
    """The attempt whose result answer hands this one over: claimed (`worker_id`), or a retry
    handed back, inserted scheduled and dispatched (the worker claims it when due)."""

    @property
    def handed_over(self) -> bool:
        """Dispatched in a result's answer: neither published nor a timer (unless lost)."""
        return self.handoff_from is not None


@dataclass(frozen=True)
class NewWait:
    """A gate step reached: the row that says what it waits for (see schema.waits)."""

    step_name: str
    kind: str
    """"pause", "approval", "event" or "child"."""
    event_name: str | None = None
    correlation_key: str | None = None
    """The rendered correlation key (event) or child key (child)."""
    deadline_ms: int | None = None


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
    """Also closes the run's open waits: the run ends, or a cancel stops them."""
    step_updates: list[StepUpdate] = field(default_factory=list)
    new_steps: list[NewStep] = field(default_factory=list)
    new_attempts: list[NewAttempt] = field(default_factory=list)
    new_waits: list[NewWait] = field(default_factory=list)
    events: list[NewEvent] = field(default_factory=list)
    parent_run_id: uuid.UUID | None = None
    """Not written: the parent of a child run, whose waits are looked at after a change that
    ends the run is committed (`EngineCore._after_commit`)."""


# Changes travel as JSON documents, one per run: a relation of documents ({rel}) drives every
# part below, so one statement writes one change or a whole batch of them.
_DOCUMENT = """jsonb_to_recordset(CAST(:changes AS jsonb)) AS d(
    run_id uuid, attempt_id uuid, token text, attempt_status text, output jsonb,
    attempt_error jsonb, expected_seq bigint, status text,
    context jsonb, error jsonb, started bool, ended bool, cancel_scheduled bool, n_events int,
    step_updates jsonb, new_steps jsonb, new_attempts jsonb, new_waits jsonb, events jsonb,
    workflow_id bigint, workflow_name text, workflow_version int, trigger text, payload jsonb,
    payload_hash text, idempotency_key text, source_run_id uuid, latest bool, reporter text,
    parent_run_id uuid, parent_step text, schedule_id text, schedule_nominal_at timestamptz,
    schedule_fired_at timestamptz, schedule_origin text)"""

_NEW_ROWS = """
ns AS (
  INSERT INTO steps (run_id, name, position, status, output, error, ended_at)
  SELECT {rel}.run_id, x.name, x.position, x.status, x.output, x.error,
         CASE WHEN x.ended THEN now() END
  FROM {rel}, jsonb_to_recordset({rel}.new_steps)
    AS x(name text, position int, status text, output jsonb, error jsonb, ended bool)
  RETURNING 1
), na AS (
  INSERT INTO attempts (id, run_id, step_name, number, token, status, queue, handler, kind,
                        heartbeat_timeout_ms, attempt_timeout_ms, due_at, kicked_at,
                        worker_id, started_at, lease_expires_at, deadline_at, handoff_from)
  SELECT x.id, {rel}.run_id, x.step_name, x.number, x.token,
         CASE WHEN x.worker_id IS NULL THEN 'scheduled' ELSE 'running' END, x.queue, x.handler,
         x.kind, x.heartbeat_timeout_ms, x.attempt_timeout_ms,
         now() + x.delay_ms * interval '1 millisecond',
         CASE WHEN (x.delay_ms = 0 AND x.kind = 'task') OR x.handoff_from IS NOT NULL
              THEN now() END,
         x.worker_id,
         -- A handed-off attempt starts now, not at the transaction's start (now()): its
         -- prerequisites may have committed after that, while this one waited for the run.
         CASE WHEN x.worker_id IS NOT NULL THEN clock_timestamp() END,
         CASE WHEN x.worker_id IS NOT NULL
              THEN clock_timestamp() + x.heartbeat_timeout_ms * interval '1 millisecond' END,
         CASE WHEN x.worker_id IS NOT NULL
              THEN clock_timestamp() + x.attempt_timeout_ms * interval '1 millisecond' END,
         x.handoff_from
  FROM {rel}, jsonb_to_recordset({rel}.new_attempts) AS x(
    id uuid, step_name text, number int, token text, queue text, handler text, kind text,
    heartbeat_timeout_ms int, attempt_timeout_ms int, delay_ms bigint, worker_id text,
    handoff_from uuid)
  RETURNING 1
), nw AS (
  INSERT INTO waits (run_id, step_name, kind, event_name, correlation_key, deadline_at)
  SELECT {rel}.run_id, x.step_name, x.kind, x.event_name, x.correlation_key,
         now() + x.deadline_ms * interval '1 millisecond'
  FROM {rel}, jsonb_to_recordset({rel}.new_waits) AS x(
    step_name text, kind text, event_name text, correlation_key text, deadline_ms bigint)
  RETURNING 1
)"""

_CHANGE = (
    """
su AS (
  UPDATE steps SET
    status = x.status,
    output = coalesce(x.output, steps.output),
    error = CASE WHEN x.status = 'completed' THEN NULL ELSE coalesce(x.error, steps.error) END,
    ended_at = CASE WHEN x.ended THEN now() ELSE steps.ended_at END
  FROM {rel}, jsonb_to_recordset({rel}.step_updates)
    AS x(name text, status text, output jsonb, error jsonb, ended bool)
  WHERE steps.run_id = {rel}.run_id AND steps.name = x.name
  RETURNING 1
),"""
    + _NEW_ROWS
    + """, ca AS (
  UPDATE attempts SET status = 'cancelled', ended_at = now()
  FROM {rel}
  WHERE {rel}.cancel_scheduled AND attempts.run_id = {rel}.run_id
    AND attempts.status = 'scheduled'
  RETURNING 1
), cw AS (
  UPDATE waits SET resolved_at = now()
  FROM {rel}
  WHERE {rel}.cancel_scheduled AND waits.run_id = {rel}.run_id AND waits.resolved_at IS NULL
  RETURNING 1
), r AS (
  UPDATE runs SET
    status = coalesce({rel}.status, runs.status),
    context = coalesce({rel}.context, runs.context),
    error = coalesce({rel}.error, runs.error),
    started_at = CASE WHEN {rel}.started THEN coalesce(runs.started_at, now())
                 ELSE runs.started_at END,
    ended_at = CASE WHEN {rel}.ended THEN now() ELSE runs.ended_at END,
    last_seq = runs.last_seq + {rel}.n_events,
    updated_at = now()
  FROM {rel} WHERE runs.id = {rel}.run_id
  RETURNING runs.id, runs.last_seq, runs.status, {rel}.n_events, {rel}.events
), e AS (
  INSERT INTO run_events (run_id, seq, type, run_status, step_name, attempt_number, data)
  SELECT r.id, r.last_seq - r.n_events + x.ord, x.type, r.status, x.step_name,
         x.attempt_number, coalesce(x.data, '{}'::jsonb)
  FROM r, jsonb_to_recordset(r.events)
    AS x(ord int, type text, step_name text, attempt_number int, data jsonb)
  RETURNING 1
)"""
)

_APPLY = (
    "WITH doc AS (SELECT * FROM "
    + _DOCUMENT
    + "),"
    + _CHANGE.replace("{rel}", "doc")
    + " SELECT last_seq FROM r"
)

# Whole "attempt ended" commands, each decided from its run as the claim saw it: the run
# row is locked and must still be at the claim's event sequence (nothing else happened to the
# run since), and the attempt must still be running with this token. A change for which that
# no longer holds writes nothing, and its caller takes the general path. At most one per run.
_APPLY_IF_CURRENT = (
    "WITH doc AS (SELECT * FROM "
    + _DOCUMENT
    + """), r0 AS (
  SELECT runs.id FROM runs JOIN doc ON doc.run_id = runs.id
  WHERE runs.last_seq = doc.expected_seq AND runs.status = ANY(:active)
  ORDER BY runs.id
  FOR UPDATE OF runs
), fin AS (
  UPDATE attempts SET status = doc.attempt_status, ended_at = now(), output = doc.output,
    error = doc.attempt_error, lease_expires_at = NULL
  FROM doc JOIN r0 ON r0.id = doc.run_id
  WHERE attempts.id = doc.attempt_id AND attempts.token = doc.token
    AND attempts.status = 'running' AND attempts.worker_id = doc.reporter
  RETURNING attempts.id, attempts.run_id
), ok AS (
  SELECT doc.* FROM doc JOIN fin ON fin.run_id = doc.run_id
),"""
    + _CHANGE.replace("{rel}", "ok")
    + " SELECT fin.id, (SELECT count(*) FROM e) AS events FROM fin"
)

# New runs with their first changes (entry steps, events) in one statement. The run rows are
# inserted here, so the changes' rows are inserted outright rather than applied to them; a run
# whose idempotency key is already taken writes nothing. A run is pending unless its first
# change says otherwise (a wait first; log steps only, which end it at once).
_START = (
    "WITH doc AS (SELECT * FROM "
    + _DOCUMENT
    + """), stale AS (
  SELECT doc.run_id FROM doc
  WHERE doc.latest AND doc.workflow_id IS DISTINCT FROM (
    SELECT w.id FROM workflows w WHERE w.name = doc.workflow_name
    ORDER BY w.version DESC LIMIT 1)
), ins AS (
  INSERT INTO runs (id, workflow_id, workflow_name, workflow_version, trigger, status, payload,
                    context, error, payload_hash, idempotency_key, source_run_id, parent_run_id,
                    parent_step, schedule_id, schedule_nominal_at, schedule_fired_at,
                    schedule_origin, last_seq, ended_at)
  SELECT doc.run_id, doc.workflow_id, doc.workflow_name, doc.workflow_version, doc.trigger,
         coalesce(doc.status, 'pending'), doc.payload, coalesce(doc.context, doc.payload),
         doc.error, doc.payload_hash, doc.idempotency_key, doc.source_run_id, doc.parent_run_id,
         doc.parent_step, doc.schedule_id, doc.schedule_nominal_at, doc.schedule_fired_at,
         doc.schedule_origin, doc.n_events, CASE WHEN doc.ended THEN now() END
  FROM doc WHERE doc.run_id NOT IN (SELECT run_id FROM stale)
  ON CONFLICT (workflow_name, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
  RETURNING id, created_at
), ok AS (
  SELECT doc.* FROM doc JOIN ins ON ins.id = doc.run_id
),"""
    + _NEW_ROWS.replace("{rel}", "ok")
    + """, e AS (
  INSERT INTO run_events (run_id, seq, type, run_status, step_name, attempt_number, data)
  SELECT ok.run_id, x.ord, x.type, coalesce(ok.status, 'pending'), x.step_name,
         x.attempt_number,
         coalesce(x.data, '{}'::jsonb)
  FROM ok, jsonb_to_recordset(ok.events)
    AS x(ord int, type text, step_name text, attempt_number int, data jsonb)
  RETURNING 1
)
SELECT id, created_at, false AS stale FROM ins
UNION ALL SELECT run_id, NULL, true FROM stale"""
)


class NotStarted(Enum):
    """Why `start` wrote nothing for a run."""

    KEY_TAKEN = "key_taken"
    """Its idempotency key already started a run."""
    NOT_LATEST = "not_latest"
    """A newer version of its workflow was registered since it was chosen."""


@dataclass(frozen=True)
class AttemptEnded:
    """An attempt that succeeded or failed, and the change it leads to, decided from its run
    as claimed."""

    change: RunChange
    attempt_id: uuid.UUID
    token: str
    status: str
    expected_seq: int
    reporter: str
    """The worker reporting it: only the one that claimed the attempt may."""
    output: JSON = None
    error: dict[str, JSON] | None = None


async def apply(conn: Connection, change: RunChange) -> int:
    """Writes `change` in one statement; returns the run's event sequence after it."""
    rows = await conn.execute(_APPLY, {"changes": dumps([_document(change)])})
    return int(rows.scalar_one())


async def apply_if_current(conn: Connection, items: list[AttemptEnded]) -> list[bool]:
    """Writes each item, all in one statement, if its run is still at `expected_seq` and
    active and its attempt still running; says per item whether it was written. At most one
    item per run."""
    documents = [
        _document(
            item.change,
            attempt_id=str(item.attempt_id),
            token=item.token,
            attempt_status=item.status,
            output=item.output,
            attempt_error=item.error,
            expected_seq=item.expected_seq,
            reporter=item.reporter,
        )
        for item in items
    ]
    rows = await conn.execute(
        _APPLY_IF_CURRENT,
        {"changes": dumps(documents), "active": [s.value for s in ACTIVE_RUN_STATUSES]},
    )
    written = {row.id for row in rows}
    return [item.attempt_id in written for item in items]


async def start(
    conn: Connection, runs: list[tuple[NewRun, RunChange]]
) -> list[datetime | NotStarted]:
    """Inserts pending runs with their first changes; per run its creation time, or why
    nothing was written for it."""
    documents = [
        _document(
            change,
            workflow_id=run.workflow_id,
            workflow_name=run.workflow_name,
            workflow_version=run.workflow_version,
            trigger=run.trigger,
            payload=run.payload,
            payload_hash=run.payload_hash,
            idempotency_key=run.idempotency_key,
            source_run_id=str(run.source_run_id) if run.source_run_id else None,
            latest=run.latest,
            # Only a child's document names its parent (absent keys read as NULL).
            **(
                {"parent_run_id": str(run.parent_run_id), "parent_step": run.parent_step}
                if run.parent_run_id is not None
                else {}
            ),
            **(_schedule_document(run.schedule) if run.schedule is not None else {}),
        )
        for run, change in runs
    ]
    rows = await conn.execute(_START, {"changes": dumps(documents)})
    created = {row.id: NotStarted.NOT_LATEST if row.stale else row.created_at for row in rows}
    return [created.get(run.id, NotStarted.KEY_TAKEN) for run, _ in runs]


def _schedule_document(schedule: ScheduleOrigin) -> dict[str, JSON]:
    return {
        "schedule_id": schedule.schedule_id,
        "schedule_nominal_at": schedule.nominal_at.isoformat(),
        "schedule_fired_at": schedule.fired_at.isoformat(),
        "schedule_origin": schedule.origin.value,
    }


def _document(change: RunChange, **extra: JSON) -> dict[str, JSON]:
    return {
        "run_id": str(change.run_id),
        "status": change.status.value if change.status else None,
        "context": change.context,
        "error": change.error,
        "started": change.started,
        "ended": change.ended,
        "cancel_scheduled": change.cancel_scheduled_attempts,
        "n_events": len(change.events),
        # vars(), not dataclasses.asdict(): the fields are JSON values already, and asdict's
        # deep copies were 4% of the server's CPU.
        "step_updates": [vars(s) for s in change.step_updates],
        "new_steps": [vars(s) for s in change.new_steps],
        "new_attempts": [{**vars(a), "id": str(a.id)} for a in change.new_attempts],
        "new_waits": [vars(w) for w in change.new_waits],
        "events": [{"ord": i + 1, **vars(e)} for i, e in enumerate(change.events)],
        **extra,
    }
