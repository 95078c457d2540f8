"""What the chaos benchmark checks once every run ended (or the deadline passed), from Postgres
(the runs, their attempts and event logs) and the workers' ledger of handler executions.

- lost: runs started (their idempotency keys) that are missing, or ended other than completed.
- applied_twice: results applied more than once: a step completed twice (two step_completed
  events, or two succeeded attempts), an attempt failed twice (two attempt_failed events for
  one attempt number), a run ended twice.
- stuck: runs not terminal at the deadline.
- handler_reruns: handler executions beyond one per step, not counting the planned failures
  (`bench.chaos_workflow`): at-least-once execution, e.g. a step whose worker was killed.
- recovery: per fault, the seconds from the moment it hit until a step completed again (once
  the fault was over: a restart done) and, when it stranded work, until the server took that
  work up again: every attempt a killed worker was running failed as worker_lost (its lease
  expired), the tasks a wiped Redis lost were published again."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import psycopg

from bench.chaos_faults import Fault, Injected
from server.engine.model import TERMINAL_RUN_STATUSES, RunStatus
from server.store.db import libpq_url

_TERMINAL = [s.value for s in TERMINAL_RUN_STATUSES]

_APPLIED_TWICE = """
SELECT
  (SELECT count(*) FROM (SELECT 1 FROM run_events e JOIN runs r ON r.id = e.run_id
     WHERE r.workflow_name = %(workflow)s AND e.type = 'step_completed'
     GROUP BY e.run_id, e.step_name HAVING count(*) > 1) x),
  (SELECT count(*) FROM (SELECT 1 FROM attempts a JOIN runs r ON r.id = a.run_id
     WHERE r.workflow_name = %(workflow)s AND a.status = 'succeeded'
     GROUP BY a.run_id, a.step_name HAVING count(*) > 1) x),
  (SELECT count(*) FROM (SELECT 1 FROM run_events e JOIN runs r ON r.id = e.run_id
     WHERE r.workflow_name = %(workflow)s AND e.type = 'attempt_failed'
     GROUP BY e.run_id, e.step_name, e.attempt_number HAVING count(*) > 1) x),
  (SELECT count(*) FROM (SELECT 1 FROM run_events e JOIN runs r ON r.id = e.run_id
     WHERE r.workflow_name = %(workflow)s
       AND e.type IN ('run_completed', 'run_failed', 'run_cancelled')
     GROUP BY e.run_id HAVING count(*) > 1) x)
"""


@dataclass(frozen=True)
class Recovery:
    injected: Injected
    progress_s: float | None
    """Until a step completed after the fault (None: none did)."""
    stranded_s: float | None
    """Until the work it stranded was taken up again (None: it stranded none)."""

    @property
    def seconds(self) -> float | None:
        known = [s for s in (self.progress_s, self.stranded_s) if s is not None]
        return max(known) if known else None


@dataclass(frozen=True)
class Audit:
    runs: int
    missing: int
    """Started (a key accepted, or never accepted) but not in Postgres."""
    not_completed: dict[str, int]
    """Terminal runs by status other than completed."""
    stuck: int
    applied_twice: int
    handler_reruns: int
    unrecorded_steps: int
    """Completed handler steps with no execution in the ledger (should be none)."""
    recoveries: list[Recovery]

    @property
    def lost(self) -> int:
        return self.missing + sum(self.not_completed.values())

    @property
    def recovery_max_s(self) -> float:
        return max((r.seconds for r in self.recoveries if r.seconds is not None), default=0.0)


def run_statuses(database_url: str, workflow: str) -> dict[str, str]:
    """The status of each run of `workflow`, by idempotency key."""
    with psycopg.connect(libpq_url(database_url)) as conn:
        rows = conn.execute(
            "SELECT idempotency_key, status FROM runs WHERE workflow_name = %s", (workflow,)
        ).fetchall()
    return {key: status for key, status in rows}


def snapshot(database_url: str, workflow: str) -> str:
    """Where the runs are: completed and active runs, queued (published, not claimed) and
    running attempts."""
    with psycopg.connect(libpq_url(database_url)) as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE status = 'completed'), "
            "count(*) FILTER (WHERE status <> ALL(%s)), "
            "(SELECT count(*) FROM attempts WHERE status = 'scheduled' AND kind = 'task' "
            " AND kicked_at IS NOT NULL AND due_at <= now()), "
            "(SELECT count(*) FROM attempts WHERE status = 'running') "
            "FROM runs WHERE workflow_name = %s",
            (_TERMINAL, workflow),
        ).fetchone()
    assert row is not None
    return f"runs {row[0]} completed, {row[1]} active; attempts {row[2]} queued, {row[3]} running"


def unfinished(statuses: dict[str, str]) -> int:
    return sum(1 for status in statuses.values() if status not in _TERMINAL)


def audit(
    database_url: str,
    workflow: str,
    keys: list[str],
    handler_steps: tuple[str, ...],
    executions: Counter[tuple[str, str, str]],
    faults: list[Injected],
) -> Audit:
    statuses = run_statuses(database_url, workflow)
    not_completed = Counter(statuses[k] for k in keys if k in statuses and statuses[k] in _TERMINAL)
    del not_completed[RunStatus.COMPLETED.value]
    with psycopg.connect(libpq_url(database_url)) as conn:
        twice = conn.execute(_APPLIED_TWICE, {"workflow": workflow}).fetchone()
        assert twice is not None
        completed_steps = conn.execute(
            "SELECT s.run_id::text, s.name FROM steps s JOIN runs r ON r.id = s.run_id "
            "WHERE r.workflow_name = %s AND s.status = 'completed' AND s.name = ANY(%s)",
            (workflow, list(handler_steps)),
        ).fetchall()
        recoveries = [_recovery(conn, fault) for fault in faults]
    reruns = sum(count - 1 for count in executions.values() if count > 1)
    unrecorded = sum(1 for run_id, step in completed_steps if not executions[(run_id, step, "ok")])
    return Audit(
        runs=len(keys),
        missing=sum(1 for k in keys if k not in statuses),
        not_completed=dict(not_completed),
        stuck=sum(1 for k in keys if k in statuses and statuses[k] not in _TERMINAL),
        applied_twice=sum(int(n) for n in twice),
        handler_reruns=reruns,
        unrecorded_steps=unrecorded,
        recoveries=recoveries,
    )


def _recovery(conn: psycopg.Connection[Any], fault: Injected) -> Recovery:
    # Completed once the fault was over (a restart done): a transaction that began just
    # before Postgres or the server went down is no sign of recovery.
    progressed = conn.execute(
        "SELECT extract(epoch FROM min(ended_at)) FROM attempts "
        "WHERE status = 'succeeded' AND ended_at > to_timestamp(%s)",
        (fault.at + fault.took_s,),
    ).fetchone()
    assert progressed is not None
    if fault.fault is Fault.WORKER_KILL:
        # Its attempts are taken up when their lease expires and they fail as worker_lost,
        # all of them (their retries then wait in the queue like any task: load, not
        # recovery). Those it reported before it died were not stranded.
        resumed = conn.execute(
            "SELECT extract(epoch FROM max(ended_at)) FROM attempts WHERE id = ANY(%s) "
            "AND status = 'failed' AND error->>'reason' = 'worker_lost'",
            (fault.stranded,),
        ).fetchone()
    else:
        # Tasks Redis lost are taken up when the server publishes them again (their claims
        # then wait for free slots like any task). Those a worker had read already and
        # claimed are not published again: they were not lost.
        resumed = conn.execute(
            "SELECT extract(epoch FROM min(kicked_at)) FROM attempts WHERE id = ANY(%s) "
            "AND kicked_at > to_timestamp(%s)",
            (fault.stranded, fault.at),
        ).fetchone()
    assert resumed is not None
    return Recovery(
        fault,
        None if progressed[0] is None else float(progressed[0]) - fault.at,
        None if resumed[0] is None else float(resumed[0]) - fault.at,
    )
