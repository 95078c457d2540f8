"""What `bench.explain` fills the database with: four workflows, and runs of every state a
run can be in, as rows inserted in bulk with SQL (each with its steps, attempts, events and
waits), plus worker rows kept live by the bench."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import psycopg
from google.protobuf import duration_pb2
from squidmesh.v1 import workflow_pb2

WORKERS = 20
"""Worker rows serving the orders and dag queues, 200 slots each (the running runs use
100 of each)."""


def workflows() -> list[workflow_pb2.WorkflowDefinition]:
    orders = workflow_pb2.WorkflowDefinition(name="bx_orders")
    orders.triggers.add(name="manual", manual=workflow_pb2.ManualTrigger())
    orders.steps.add(name="reserve", task=workflow_pb2.TaskStep(handler="bx.reserve"))
    orders.steps.add(name="ship", irreversible=True, task=workflow_pb2.TaskStep(handler="bx.ship"))
    orders.steps.add(name="audit", task=workflow_pb2.TaskStep(handler="bx.unserved"))
    orders.transitions.add(from_step="reserve", to="ship")
    orders.transitions.add(from_step="ship", to="complete")
    orders.transitions.add(from_step="reserve", on=workflow_pb2.OUTCOME_ERROR, to="audit")

    dag = workflow_pb2.WorkflowDefinition(name="bx_dag")
    dag.triggers.add(name="manual", manual=workflow_pb2.ManualTrigger())
    dag.steps.add(name="a", task=workflow_pb2.TaskStep(handler="bx.a"))
    dag.steps.add(name="b", task=workflow_pb2.TaskStep(handler="bx.b"), after=["a"])
    dag.steps.add(name="c", task=workflow_pb2.TaskStep(handler="bx.c"), after=["a", "b"])

    cool = workflow_pb2.WorkflowDefinition(name="bx_cool")
    cool.triggers.add(name="manual", manual=workflow_pb2.ManualTrigger())
    cool.steps.add(
        name="cool", wait=workflow_pb2.WaitStep(duration=duration_pb2.Duration(seconds=3600))
    )

    gates = workflow_pb2.WorkflowDefinition(name="bx_gates")
    gates.triggers.add(name="manual", manual=workflow_pb2.ManualTrigger())
    gates.steps.add(
        name="sign_off",
        approval=workflow_pb2.ApprovalStep(
            required_approvals=2, deadline=duration_pb2.Duration(seconds=86400)
        ),
    )
    gates.steps.add(name="hold", pause=workflow_pb2.PauseStep())
    gates.steps.add(
        name="settled",
        wait_event=workflow_pb2.WaitEventStep(event="payment.settled", correlation_key="k"),
    )
    gates.transitions.add(from_step="sign_off", to="hold")
    gates.transitions.add(from_step="sign_off", on=workflow_pb2.OUTCOME_ERROR, to="complete")
    gates.transitions.add(from_step="hold", to="settled")
    gates.transitions.add(from_step="settled", to="complete")
    return [orders, dag, cool, gates]


@dataclass
class Kind:
    """Runs of one state: their rows, as offsets from now in seconds, and the blocker the
    first of ExplainRun's answer must have."""

    name: str
    share: float
    workflow: str
    status: str
    expected: str
    steps: list[dict[str, Any]]
    attempts: list[dict[str, Any]] = field(default_factory=list)
    events: list[tuple[str, str, str | None]] = field(default_factory=list)
    """(type, run status, step)."""
    waits: list[dict[str, Any]] = field(default_factory=list)
    error: dict[str, Any] | None = None
    ended: bool = False


def _step(name: str, position: int, status: str, attempts: int = 1) -> dict[str, Any]:
    return {"name": name, "position": position, "status": status, "attempt_count": attempts}


def _attempt(step: str, number: int, status: str, handler: str, **kw: Any) -> dict[str, Any]:
    return {
        "step_name": step,
        "number": number,
        "status": status,
        "handler": handler,
        "queue": kw.get("queue", "bx_orders"),
        "kind": kw.get("kind", "task"),
        "due_s": kw.get("due_s", -60),
        "kicked": kw.get("kicked", True),
        "worker": kw.get("worker", status in ("running", "succeeded", "failed")),
        "lease_s": kw.get("lease_s"),
        "error": kw.get("error"),
    }


_BOOM = {
    "reason": "handler_error",
    "message": "carrier down",
    "type": "Timeout",
    "details": {},
    "step": "ship",
    "attempt_number": 3,
    "non_retryable": False,
}
_LIFE = [
    ("run_created", "pending", None),
    ("attempt_scheduled", "pending", "reserve"),
    ("attempt_started", "running", "reserve"),
    ("step_completed", "running", "reserve"),
    ("transition", "running", "reserve"),
    ("attempt_scheduled", "running", "ship"),
]


def kinds() -> list[Kind]:
    done = [
        _attempt("reserve", 1, "succeeded", "bx.reserve"),
        _attempt("ship", 1, "succeeded", "bx.ship"),
    ]
    return [
        Kind(
            "completed",
            0.45,
            "bx_orders",
            "completed",
            "RUN_COMPLETED",
            [_step("reserve", 0, "completed"), _step("ship", 1, "completed")],
            done,
            [
                *_LIFE,
                ("attempt_started", "running", "ship"),
                ("step_completed", "running", "ship"),
                ("run_completed", "completed", None),
            ],
            ended=True,
        ),
        Kind(
            "failed",
            0.08,
            "bx_orders",
            "failed",
            "RUN_FAILED",
            [_step("reserve", 0, "completed"), _step("ship", 1, "failed", 3)],
            [done[0], *(_attempt("ship", n, "failed", "bx.ship", error=_BOOM) for n in (1, 2, 3))],
            [*_LIFE, *[("step_failed", "running", "ship")] * 3, ("run_failed", "failed", "ship")],
            error=_BOOM,
            ended=True,
        ),
        Kind(
            "cancelled",
            0.05,
            "bx_orders",
            "cancelled",
            "RUN_CANCELLED",
            [_step("reserve", 0, "cancelled")],
            [_attempt("reserve", 1, "cancelled", "bx.reserve")],
            [
                *_LIFE[:2],
                ("cancel_requested", "pending", None),
                ("run_cancelled", "cancelled", None),
            ],
            ended=True,
        ),
        Kind(
            "running",
            0.02,
            "bx_orders",
            "running",
            "ATTEMPT_RUNNING",
            [_step("reserve", 0, "completed"), _step("ship", 1, "running")],
            [done[0], _attempt("ship", 1, "running", "bx.ship", lease_s=3600)],
            [
                *_LIFE,
                ("attempt_started", "running", "ship"),
                *[("attempt_progress", "running", "ship")] * 20,
            ],
        ),
        Kind(
            "retrying",
            0.05,
            "bx_orders",
            "retrying",
            "RETRY_BACKOFF",
            [_step("reserve", 0, "completed"), _step("ship", 1, "retrying", 2)],
            [
                done[0],
                _attempt("ship", 1, "failed", "bx.ship", error=_BOOM),
                _attempt("ship", 2, "scheduled", "bx.ship", due_s=3600, kicked=False),
            ],
            [*_LIFE, ("attempt_started", "running", "ship"), ("step_retrying", "retrying", "ship")],
        ),
        Kind(
            "dispatched",
            0.05,
            "bx_orders",
            "pending",
            "DISPATCHED_NOT_STARTED",
            [_step("reserve", 0, "scheduled")],
            [_attempt("reserve", 1, "scheduled", "bx.reserve")],
            _LIFE[:2],
        ),
        Kind(
            "no_worker",
            0.04,
            "bx_orders",
            "running",
            "NO_WORKER_FOR_HANDLER",
            [_step("reserve", 0, "failed"), _step("audit", 2, "scheduled")],
            [
                _attempt("reserve", 1, "failed", "bx.reserve", error=_BOOM),
                _attempt("audit", 1, "scheduled", "bx.unserved"),
            ],
            [
                *_LIFE[:3],
                ("step_failed", "running", "reserve"),
                ("attempt_scheduled", "running", "audit"),
            ],
        ),
        Kind(
            "timer",
            0.06,
            "bx_cool",
            "waiting",
            "WAITING_TIMER",
            [_step("cool", 0, "waiting")],
            [_attempt("cool", 1, "scheduled", "", queue="", kind="wait", due_s=1800, kicked=False)],
            [("run_created", "waiting", None), ("attempt_scheduled", "waiting", "cool")],
        ),
        Kind(
            "dependencies",
            0.06,
            "bx_dag",
            "running",
            "DISPATCHED_NOT_STARTED",
            [_step("a", 0, "completed"), _step("b", 1, "scheduled")],
            [
                _attempt("a", 1, "succeeded", "bx.a", queue="bx_dag"),
                _attempt("b", 1, "scheduled", "bx.b", queue="bx_dag"),
            ],
            [
                ("run_created", "pending", None),
                ("attempt_scheduled", "pending", "a"),
                ("attempt_started", "running", "a"),
                ("step_completed", "running", "a"),
                ("attempt_scheduled", "running", "b"),
            ],
        ),
        Kind(
            "approval",
            0.08,
            "bx_gates",
            "paused",
            "WAITING_APPROVAL",
            [_step("sign_off", 0, "paused", 0)],
            [],
            [
                ("run_created", "paused", None),
                ("step_waiting", "paused", "sign_off"),
                ("approval_voted", "paused", "sign_off"),
            ],
            waits=[
                {
                    "step_name": "sign_off",
                    "kind": "approval",
                    "deadline_s": 86400,
                    "votes": [
                        {
                            "actor": "alice",
                            "comment": "ok",
                            "at": "2026-12-02T07:00:00Z",
                            "payload": {},
                        }
                    ],
                }
            ],
        ),
        Kind(
            "paused",
            0.03,
            "bx_gates",
            "paused",
            "PAUSED",
            [_step("sign_off", 0, "completed", 0), _step("hold", 1, "paused", 0)],
            [],
            [
                ("run_created", "paused", None),
                ("step_completed", "paused", "sign_off"),
                ("step_waiting", "paused", "hold"),
            ],
            waits=[{"step_name": "hold", "kind": "pause"}],
        ),
        Kind(
            "event",
            0.03,
            "bx_gates",
            "waiting",
            "WAITING_EVENT",
            [
                _step("sign_off", 0, "completed", 0),
                _step("hold", 1, "completed", 0),
                _step("settled", 2, "waiting", 0),
            ],
            [],
            [
                ("run_created", "paused", None),
                ("step_completed", "waiting", "hold"),
                ("step_waiting", "waiting", "settled"),
            ],
            waits=[
                {
                    "step_name": "settled",
                    "kind": "event",
                    "event_name": "payment.settled",
                    "correlation_key": "k",
                }
            ],
        ),
    ]


def fill(
    conn: psycopg.Connection[Any], kinds: list[Kind], total: int, ids: dict[str, int]
) -> dict[str, list[str]]:
    """Inserts the runs of every kind; returns their ids by kind."""
    by_kind: dict[str, list[str]] = {}
    offset = 0
    for kind in kinds:
        n = max(1, round(total * kind.share))
        params = {
            "kind": kind.name,
            "n": n,
            "offset": offset,
            "wf_id": ids[kind.workflow],
            "wf": kind.workflow,
            "status": kind.status,
            "ended": kind.ended,
            "error": json.dumps(kind.error) if kind.error else None,
            "steps": json.dumps(kind.steps),
            "attempts": json.dumps(kind.attempts),
            "events": json.dumps(
                [{"type": t, "run_status": s, "step_name": st} for t, s, st in kind.events]
            ),
            "waits": json.dumps(kind.waits),
            "workers": WORKERS,
        }
        # Runs spread over the last day; a run's id is derived from its kind and number.
        run = "md5(%(kind)s || i)::uuid"
        born = "now() - ((%(offset)s + i) * 0.8) * interval '1 second'"
        conn.execute(
            "INSERT INTO runs (id, workflow_id, workflow_name, workflow_version, trigger, status, "
            "payload, context, error, payload_hash, last_seq, created_at, started_at, ended_at, "
            f"updated_at) SELECT {run}, %(wf_id)s, %(wf)s, 1, 'manual', %(status)s, '{{}}', "
            f"'{{}}', %(error)s::jsonb, '', jsonb_array_length(%(events)s::jsonb), {born}, "
            f"{born}, CASE WHEN %(ended)s THEN now() END, now() "
            "FROM generate_series(1, %(n)s) i",
            params,
        )
        conn.execute(
            "INSERT INTO steps (run_id, name, position, status, attempt_count, created_at) "
            f"SELECT {run}, s.name, s.position, s.status, s.attempt_count, {born} "
            "FROM generate_series(1, %(n)s) i, jsonb_to_recordset(%(steps)s::jsonb) "
            "AS s(name text, position int, status text, attempt_count int)",
            params,
        )
        conn.execute(
            "INSERT INTO attempts (id, run_id, step_name, number, token, status, queue, handler, "
            "kind, worker_id, error, heartbeat_timeout_ms, due_at, kicked_at, kick_count, "
            "created_at, started_at, ended_at, lease_expires_at) "
            f"SELECT gen_random_uuid(), {run}, a.step_name, a.number, 't', a.status, a.queue, "
            "a.handler, a.kind, CASE WHEN a.worker THEN 'bx-worker-' || (i %% %(workers)s) END, "
            "a.error, 10000, now() + a.due_s * interval '1 second', "
            "CASE WHEN a.kicked THEN now() + a.due_s * interval '1 second' END, "
            "CASE WHEN a.kicked THEN 1 ELSE 0 END, "
            f"{born}, CASE WHEN a.worker THEN {born} END, "
            "CASE WHEN a.status IN ('succeeded', 'failed', 'cancelled') THEN now() END, "
            "now() + a.lease_s * interval '1 second' "
            "FROM generate_series(1, %(n)s) i, jsonb_to_recordset(%(attempts)s::jsonb) "
            "AS a(step_name text, number int, status text, queue text, handler text, kind text, "
            "due_s float, kicked bool, worker bool, lease_s float, error jsonb)",
            params,
        )
        conn.execute(
            "INSERT INTO run_events (run_id, seq, type, run_status, step_name, data, created_at) "
            f"SELECT {run}, e.seq, e.type, e.run_status, e.step_name, '{{}}', {born} "
            "FROM generate_series(1, %(n)s) i, ROWS FROM (jsonb_to_recordset(%(events)s::jsonb) "
            "AS (type text, run_status text, step_name text)) WITH ORDINALITY "
            "AS e(type, run_status, step_name, seq)",
            params,
        )
        conn.execute(
            "INSERT INTO waits (run_id, step_name, kind, event_name, correlation_key, "
            "deadline_at, votes, created_at) "
            f"SELECT {run}, w.step_name, w.kind, w.event_name, w.correlation_key || i, "
            "now() + w.deadline_s * interval '1 second', coalesce(w.votes, '[]'), "
            f"{born} FROM generate_series(1, %(n)s) i, jsonb_to_recordset(%(waits)s::jsonb) "
            "AS w(step_name text, kind text, event_name text, correlation_key text, "
            "deadline_s float, votes jsonb)",
            params,
        )
        rows = conn.execute(
            f"SELECT {run}::text FROM generate_series(1, %(n)s) i", params
        ).fetchall()
        by_kind[kind.name] = [r[0] for r in rows]
        offset += n
    return by_kind


def workers(conn: psycopg.Connection[Any]) -> None:
    """Worker rows serving the orders and dag queues (all but bx.unserved), connected; kept
    live by heartbeats the bench writes itself (`_keep_live`)."""
    conn.execute(
        "INSERT INTO workers (id, queues, handlers, concurrency, labels, host, connected_at, "
        "last_seen_at) SELECT 'bx-worker-' || i, ARRAY['bx_orders', 'bx_dag'], "
        "ARRAY['bx.reserve', 'bx.ship', 'bx.a', 'bx.b', 'bx.c'], 200, '{}', 'bench', now(), "
        "now() FROM generate_series(0, %(n)s - 1) i",
        {"n": WORKERS},
    )


def keep_live(conn: psycopg.Connection[Any]) -> None:
    conn.execute("UPDATE workers SET last_seen_at = now()")
