"""What the schedule end-to-end tests share: cron triggers and log-step workflows as the
contract's messages, reads of the database (its clock, decided ticks, scheduled runs) and the
checks on them, and server replicas on one database.

Every wait is for something recorded in the database and every window is measured on its clock
(the one ticks are decided on): a slow machine makes the tests slower, not red."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import pairwise
from typing import Any, cast

import psycopg
from google.protobuf import duration_pb2
from squidmesh.v1 import workflow_pb2

from server.engine.model import ACTIVE_RUN_STATUSES
from server.engine.schedule_commands import tick_run_id
from server.store.db import libpq_url
from tests.e2e.conftest import Cluster
from tests.support import ServerProcess, wait_for

SECOND = timedelta(seconds=1)
ACTIVE = {s.value for s in ACTIVE_RUN_STATUSES}
WAIT_S = 60.0
"""The longest any wait of these tests may take before it gives up: far above what each needs
(a few seconds), so that only a schedule that stopped ticking times out."""

# --- definitions --------------------------------------------------------------------------


def cron(
    expression: str = "* * * * * *",
    *,
    missed: workflow_pb2.MissedTickPolicy.ValueType = workflow_pb2.MISSED_TICK_POLICY_RUN_ALL,
    overlap: workflow_pb2.OverlapPolicy.ValueType = workflow_pb2.OVERLAP_POLICY_ALLOW_ALL,
    max_catchup_runs: int = 1000,
) -> workflow_pb2.CronTrigger:
    """A cron trigger whose every tick starts a run unless a test says otherwise: RUN_ALL for
    ticks a busy timer loop decides late, ALLOW_ALL for runs that have not ended yet."""
    return workflow_pb2.CronTrigger(
        expression=expression,
        missed_tick_policy=missed,
        overlap_policy=overlap,
        max_catchup_runs=max_catchup_runs,
        catchup_window=duration_pb2.Duration(seconds=600),
    )


def beat(name: str, **triggers: workflow_pb2.CronTrigger) -> workflow_pb2.WorkflowDefinition:
    """A workflow of one log step (no worker), fired by each of `triggers` (by name)."""
    d = workflow_pb2.WorkflowDefinition(name=name)
    d.triggers.add(name="manual", manual=workflow_pb2.ManualTrigger())
    for trigger, spec in triggers.items():
        d.triggers.add(name=trigger, cron=spec)
    d.steps.add(name="note", log=workflow_pb2.LogStep(message="tick"))
    return d


# --- the database ---------------------------------------------------------------------------


def rows(cluster: Cluster, query: str, **params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(libpq_url(cluster.env["SQUIDMESH_DATABASE_URL"])) as conn:
        return conn.execute(query, params).fetchall()


def db_now(cluster: Cluster) -> datetime:
    """Postgres' clock: the one ticks are decided on."""
    return cast(datetime, rows(cluster, "SELECT clock_timestamp()")[0][0])


def sleep_until(cluster: Cluster, instant: datetime) -> None:
    """Until the database's clock has passed `instant`."""
    while (left := (instant - db_now(cluster)).total_seconds()) > 0:
        time.sleep(min(left + 0.01, 0.5))


@dataclass(frozen=True)
class TickRow:
    nominal: datetime
    fired: datetime
    run_id: uuid.UUID | None
    outcome: str
    reason: str

    @property
    def late(self) -> timedelta:
        return self.fired - self.nominal


def ticks(cluster: Cluster, schedule: str) -> list[TickRow]:
    """The schedule's decided ticks, in nominal order."""
    return [
        TickRow(*r)
        for r in rows(
            cluster,
            "SELECT nominal_at, fired_at, run_id, outcome, reason FROM schedule_ticks "
            "WHERE schedule_id = %(id)s ORDER BY nominal_at",
            id=schedule,
        )
    ]


def ticks_until(
    cluster: Cluster, schedule: str, instant: datetime | None, what: str
) -> list[TickRow]:
    """Waits until the schedule has decided a tick at or after `instant` (None: any tick)."""

    def decided() -> list[TickRow] | None:
        got = ticks(cluster, schedule)
        return got if got and (instant is None or got[-1].nominal >= instant) else None

    return wait_for(decided, WAIT_S, f"{schedule}: {what}", every=0.1)


def scheduled_runs(cluster: Cluster, schedule: str) -> list[tuple[uuid.UUID, datetime]]:
    """(id, nominal instant) of each run the schedule started, in nominal order."""
    return [
        (r[0], r[1])
        for r in rows(
            cluster,
            "SELECT id, schedule_nominal_at FROM runs WHERE schedule_id = %(id)s "
            "ORDER BY schedule_nominal_at, id",
            id=schedule,
        )
    ]


def assert_every_second(decided: Sequence[TickRow]) -> None:
    nominals = [t.nominal for t in decided]
    gaps = [(a, b) for a, b in pairwise(nominals) if b - a != SECOND]
    assert not gaps, f"ticks not one second apart: {gaps}"


def assert_one_run_per_started_tick(cluster: Cluster, schedule: str) -> None:
    """Each started tick has one run, with the id its tick names; there is no other run."""
    started = [(t.run_id, t.nominal) for t in ticks(cluster, schedule) if t.outcome == "started"]
    assert started == [(tick_run_id(schedule, n), n) for _, n in started]
    assert scheduled_runs(cluster, schedule) == started


# --- processes ------------------------------------------------------------------------------


def start_replicas(cluster: Cluster, *ports: int | None) -> list[ServerProcess]:
    """Server processes on the cluster's database and Redis, started together (a port of
    None: a free one); the cluster's client talks to the first."""
    servers = []
    for port in ports:
        server = ServerProcess(cluster.env, cluster.log_dir, port, wait=False)
        cluster.processes.append(server)  # stopped, and its log shown, whatever happens
        servers.append(server)
    for server in servers:
        server.wait_healthy()
    cluster.server = servers[0]
    return servers


def stop_servers(cluster: Cluster) -> None:
    """Stops the workers, then every server process (SIGTERM): nothing decides ticks while the
    test reads them."""
    for process in sorted(cluster.processes, key=lambda p: isinstance(p, ServerProcess)):
        process.terminate()


def run_ended(cluster: Cluster, run_id: uuid.UUID | None) -> datetime | None:
    """When the run ended (None: it is still active)."""
    [(status, ended)] = rows(
        cluster, "SELECT status, ended_at FROM runs WHERE id = %(id)s", id=run_id
    )
    assert (status in ACTIVE) == (ended is None), (status, ended)
    return cast(datetime | None, ended)


def ticks_decided_after(
    cluster: Cluster, schedule: str, instant: datetime, count: int, what: str
) -> list[TickRow]:
    """Waits until the schedule has decided `count` ticks at claims after `instant`."""

    def decided() -> list[TickRow] | None:
        got = ticks(cluster, schedule)
        return got if sum(t.fired > instant for t in got) >= count else None

    return wait_for(decided, WAIT_S, f"{schedule}: {what}", every=0.1)
