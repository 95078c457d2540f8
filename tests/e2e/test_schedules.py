"""Schedules with real server processes on the embedded Postgres and Redis: exactly one run per
tick across two replicas (one of them SIGKILLed and restarted), ticks missed while no server
ran decided by the missed-tick policy, the overlap policy with a run held by a worker, and new
versions, pause and resume moving or stopping a schedule.

Every window is measured on the database's clock (the one ticks are decided on) and every
wait is for something recorded in the database, so a slow machine makes these tests slower,
not red. Runs of log-step workflows need no worker; overlap holds a run in a worker step."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from itertools import pairwise
from pathlib import Path
from typing import Any, cast

import grpc
import psycopg
from google.protobuf import duration_pb2
from squidmesh.v1 import schedule_pb2, schedule_service_pb2, workflow_pb2
from squidmesh.v1.schedule_service_pb2_grpc import ScheduleServiceStub

from server.engine.model import ACTIVE_RUN_STATUSES
from server.engine.schedule.due_ticks import ON_TIME_GRACE
from server.engine.schedule_commands import tick_run_id
from server.store.db import libpq_url
from tests.e2e.conftest import Cluster
from tests.e2e.schedule_flows import held, held_definition, release, release_all
from tests.support import ServerProcess, wait_for
from worker_sdk import Client

SECOND = timedelta(seconds=1)
ACTIVE = {s.value for s in ACTIVE_RUN_STATUSES}
WAIT_S = 60.0
"""The longest any wait below may take before the test gives up: far above what each needs
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


# --- 1. exactly one run per tick across replicas ----------------------------------------------

RUN_FOR = timedelta(seconds=10)


def test_two_replicas_start_one_run_per_tick_through_a_sigkill(cluster: Cluster) -> None:
    """A schedule ticking every second on two replicas for ten seconds; then one replica
    SIGKILLed (maybe inside a claim) while the other carries on, and restarted on its port,
    until three seconds after it is back: every second has exactly one tick, each tick started
    exactly one run, with the id its tick names, and every run completed."""
    schedule = "e2e_beat/every_second"
    first, second = start_replicas(cluster, None, None)
    with Client(first.address) as client:
        client.register_workflow(beat("e2e_beat", every_second=cron()))
    start = ticks_until(cluster, schedule, None, "a first tick")[0].nominal
    ticks_until(cluster, schedule, start + RUN_FOR, f"{RUN_FOR} of ticks on two replicas")
    first.kill()
    killed_at = db_now(cluster)
    ticks_until(cluster, schedule, killed_at + 2 * SECOND, "ticks on the surviving replica")
    [restarted] = start_replicas(cluster, first.port)
    back_at = db_now(cluster)
    end = back_at + 3 * SECOND
    ticks_until(cluster, schedule, end, "ticks after the restart")
    stop_servers(cluster)

    decided = ticks(cluster, schedule)
    assert decided[0].nominal == start
    assert decided[-1].nominal >= end
    assert_every_second(decided)  # no gap, no tick twice (the row is unique anyway)
    assert {t.outcome for t in decided} == {"started"}, decided
    assert_one_run_per_started_tick(cluster, schedule)
    statuses = rows(
        cluster,
        "SELECT status, count(*) FROM runs WHERE schedule_id = %(id)s GROUP BY 1",
        id=schedule,
    )
    assert statuses == [("completed", len(decided))]
    # Which replica decided each tick: the one that wrote its log step's line.
    fired = [p.output().count('"workflow_log"') for p in (first, second, restarted)]
    late = [t for t in decided if t.late > ON_TIME_GRACE]
    print(
        f"measured: {len(decided)} ticks, lateness max {max(t.late for t in decided)}, "
        f"{len(late)} later than {ON_TIME_GRACE}; runs started by the first replica, the "
        f"second and the restarted first: {fired}"
    )


# --- 2. ticks missed while no server ran ---------------------------------------------------

DOWN_FOR = 5
"""Ticks each schedule misses while no server runs, at least: the restart comes later than
that by more than ON_TIME_GRACE, so they are all decided as missed, not as merely late."""

MISSED_REASONS = {
    "skip": "missed-tick policy SKIP",
    "latest": "only the latest missed tick runs (RUN_LATEST)",
    "all": "",  # none skipped
}


def test_ticks_missed_while_no_server_ran_follow_the_missed_tick_policy(cluster: Cluster) -> None:
    """Three every-second schedules (SKIP, RUN_LATEST, RUN_ALL with a cap above what is
    missed), the server stopped for at least five ticks: the restarted server decides every
    missed tick at once. Those more than ON_TIME_GRACE late at that moment are the missed ones
    (at least five): SKIP starts none, RUN_LATEST the latest, RUN_ALL all of them; the ticks
    still within the grace start as on time. Every second stays decided exactly once."""
    policies = {
        "skip": workflow_pb2.MISSED_TICK_POLICY_SKIP,
        "latest": workflow_pb2.MISSED_TICK_POLICY_RUN_LATEST,
        "all": workflow_pb2.MISSED_TICK_POLICY_RUN_ALL,
    }
    schedules = {name: f"e2e_catchup/{name}" for name in policies}
    server = cluster.start_server()
    with cluster.client() as client:
        client.register_workflow(
            beat("e2e_catchup", **{name: cron(missed=p) for name, p in policies.items()})
        )
    for schedule in schedules.values():
        first = ticks_until(cluster, schedule, None, "a first tick")[0].nominal
        ticks_until(cluster, schedule, first + SECOND, "two ticks before the stop")
    server.terminate()
    before = {name: ticks(cluster, s) for name, s in schedules.items()}
    # Down until DOWN_FOR ticks after the last one decided are later than the grace.
    last = max(decided[-1].nominal for decided in before.values())
    sleep_until(cluster, last + DOWN_FOR * SECOND + ON_TIME_GRACE)
    cluster.start_server()
    back_at = db_now(cluster)
    for schedule in schedules.values():
        ticks_until(cluster, schedule, back_at + SECOND, "ticks after the restart")
    stop_servers(cluster)

    for name, schedule in schedules.items():
        decided = ticks(cluster, schedule)
        assert decided[: len(before[name])] == before[name]
        assert_every_second(decided)
        assert {t.outcome for t in before[name]} == {"started"}
        # The restarted server's first claim decided all the ticks that fell due meanwhile.
        after = decided[len(before[name]) :]
        assert after[0].fired - last > DOWN_FOR * SECOND + ON_TIME_GRACE
        at_restart = [t for t in after if t.fired == after[0].fired]
        missed = [t for t in at_restart if t.late > ON_TIME_GRACE]
        assert len(missed) >= DOWN_FOR, (name, at_restart)
        assert missed == at_restart[: len(missed)]  # the oldest ones
        expected = {
            "skip": ["skipped_missed"] * len(missed),
            "latest": ["skipped_missed"] * (len(missed) - 1) + ["started"],
            "all": ["started"] * len(missed),
        }[name]
        assert [t.outcome for t in missed] == expected, (name, missed)
        for tick in missed:
            assert (tick.run_id is None) == (tick.outcome == "skipped_missed")
            if tick.outcome == "skipped_missed":
                assert MISSED_REASONS[name] in tick.reason, tick
        # On time: those within the grace at the restart, and at any later claim.
        on_time = [t for t in after if t.late <= ON_TIME_GRACE]
        assert {t.outcome for t in on_time} == {"started"}, (name, on_time)
        assert_one_run_per_started_tick(cluster, schedule)
        print(
            f"measured: {name}: {len(missed)} missed (decided {at_restart[0].fired - last} "
            f"after the last tick before the stop), {len(at_restart) - len(missed)} on time "
            "at the restart"
        )


# --- 3. overlap: a run still active when the next ticks come ------------------------------------


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


def test_overlap_skip_and_buffer_one_while_a_worker_holds_the_run(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Two every-second schedules whose first runs hold in a worker step until released.
    SKIP: every tick decided while its run is active starts nothing and is recorded as
    skipped_overlap with its reason; once the run has ended, ticks start runs again.
    BUFFER_ONE: while its run is active one tick is held on the schedule (not decided yet) and
    the others are skipped_overlap; once the run has ended exactly one run starts, for a tick
    that came while it was active, and while that one holds nothing else starts."""
    skip, buffer = "e2e_sched_held/skip", "e2e_sched_held/buffer"
    cluster.start_server()
    cluster.start_worker("tests.e2e.schedule_flows", concurrency=4, args=["--drain-timeout", "2"])
    with cluster.client() as client:
        cluster.wait_registered(client, held.name)
        client.register_workflow(
            held_definition(
                tmp_path,
                skip=cron(overlap=workflow_pb2.OVERLAP_POLICY_SKIP),
                buffer=cron(overlap=workflow_pb2.OVERLAP_POLICY_BUFFER_ONE),
            )
        )
    firsts = {s: ticks_until(cluster, s, None, "a first tick")[0] for s in (skip, buffer)}
    # Ticks decided together with the first start together (no run is active before).
    together = {
        s: [t for t in ticks(cluster, s) if t.fired == first.fired] for s, first in firsts.items()
    }
    decided = {
        skip: ticks_decided_after(cluster, skip, firsts[skip].fired, 3, "ticks while held"),
        buffer: ticks_decided_after(cluster, buffer, firsts[buffer].fired, 2, "ticks while held"),
    }
    [(buffered,)] = rows(
        cluster, "SELECT buffered_nominal_at FROM schedules WHERE id = %(id)s", id=buffer
    )
    runs_while_held = {s: scheduled_runs(cluster, s) for s in firsts}
    # Read after all of the above: active now, so active when those ticks were decided.
    assert [run_ended(cluster, first.run_id) for first in firsts.values()] == [None, None]
    for schedule in firsts:
        assert runs_while_held[schedule] == [(t.run_id, t.nominal) for t in together[schedule]]
    reasons = {skip: "overlap policy SKIP", buffer: "overlap policy BUFFER_ONE"}
    for schedule in firsts:
        assert {t.outcome for t in together[schedule]} == {"started"}
        for tick in decided[schedule][len(together[schedule]) :]:
            assert (tick.outcome, tick.run_id) == ("skipped_overlap", None), tick
            assert reasons[schedule] in tick.reason, tick
    assert buffered is not None and buffered > firsts[buffer].nominal, buffered
    assert buffered not in [t.nominal for t in decided[buffer]]  # held, not decided yet

    for first in firsts.values():
        release(tmp_path, str(first.run_id))
    ended = {
        s: wait_for(partial(run_ended, cluster, first.run_id), WAIT_S, f"{s}: run end")
        for s, first in firsts.items()
    }
    resumed = wait_for(
        lambda: [t for t in ticks(cluster, skip) if t.fired > ended[skip] and t.run_id],
        WAIT_S,
        f"{skip}: a tick to start a run once the held one ended",
    )
    [second] = wait_for(
        lambda: [t for t in ticks(cluster, buffer) if t.run_id][len(together[buffer]) :],
        WAIT_S,
        f"{buffer}: the held tick to start a run",
    )
    # A tick that came while the first run was active; no run started before it ended.
    assert firsts[buffer].nominal < second.nominal < ended[buffer], (second, ended)
    # The second run holds too: the ticks that come meanwhile start nothing.
    ticks_decided_after(cluster, buffer, second.fired, 2, "ticks while the second run holds")
    started = [(t.run_id, t.nominal) for t in [*together[buffer], second]]
    assert scheduled_runs(cluster, buffer) == started
    release_all(tmp_path)
    stop_servers(cluster)
    assert_one_run_per_started_tick(cluster, skip)
    assert_one_run_per_started_tick(cluster, buffer)
    print(
        f"measured: SKIP: {len(decided[skip]) - len(together[skip])} ticks skipped while held, "
        f"a run started {resumed[0].fired - ended[skip]} after it ended; BUFFER_ONE: held "
        f"{buffered}, started {second.nominal} {second.fired - ended[buffer]} after it ended"
    )


# --- 4. new versions, pause and resume ------------------------------------------------------


def test_versions_pause_and_resume_move_and_stop_schedules(cluster: Cluster) -> None:
    """Three every-second schedules of one workflow.
    `moved`: a new version makes it tick every other second: it follows the new expression
    from that registration on; a later version without it stops it: no tick is decided after
    that registration committed.
    `paused`: PauseSchedule, then (while paused) a new version that leaves it unchanged, then
    ResumeSchedule: no tick decided while paused, ticks again from the first one after the
    resume, none of the paused interval started (no burst), which one skipped_paused decision
    on its first tick accounts for (who paused, why).
    `steady`, the same in every version, ticks every second throughout: the timer loop ran."""
    moved, paused, steady = "e2e_moved/moved", "e2e_moved/paused", "e2e_moved/steady"
    cluster.start_server()
    assert cluster.server is not None
    with cluster.client() as client, grpc.insecure_channel(cluster.server.address) as channel:
        schedules = ScheduleServiceStub(channel)
        client.register_workflow(beat("e2e_moved", moved=cron(), paused=cron(), steady=cron()))
        start = ticks_until(cluster, moved, None, "a first tick")[0].nominal
        ticks_until(cluster, paused, start + SECOND, "ticks before the pause")

        paused_schedule = schedules.PauseSchedule(
            schedule_service_pb2.PauseScheduleRequest(
                schedule_id=paused, actor="e2e-ops", note="maintenance"
            )
        ).schedule
        paused_at = db_now(cluster)  # the pause committed before this
        assert paused_schedule.state == schedule_pb2.SCHEDULE_STATE_PAUSED
        assert (paused_schedule.paused_by, paused_schedule.pause_note) == (
            "e2e-ops",
            "maintenance",
        )
        # Paused ticks fall due before the next version: it must not move the paused schedule.
        ticks_until(cluster, steady, paused_at + 2 * SECOND, "ticks while paused")

        changing = db_now(cluster)
        client.register_workflow(
            beat("e2e_moved", moved=cron("*/2 * * * * *"), paused=cron(), steady=cron())
        )
        changed = db_now(cluster)  # the registration committed before this
        ticks_until(cluster, moved, changed + 4 * SECOND, "ticks on the new expression")

        resuming = db_now(cluster)
        resumed_schedule = schedules.ResumeSchedule(
            schedule_service_pb2.ResumeScheduleRequest(schedule_id=paused, actor="e2e-ops")
        ).schedule
        resumed = db_now(cluster)
        assert resumed_schedule.state == schedule_pb2.SCHEDULE_STATE_ACTIVE
        assert resumed_schedule.next_ticks[0].nominal_time.ToDatetime(UTC) > resuming

        client.register_workflow(beat("e2e_moved", paused=cron(), steady=cron()))
        stopped = db_now(cluster)
        ticks_until(cluster, steady, stopped + 2 * SECOND, "the timer loop to go on")
        ticks_until(cluster, paused, resumed + 2 * SECOND, "ticks after the resume")
        state = rows(
            cluster, "SELECT state, next_due_at FROM schedules WHERE id = %(id)s", id=moved
        )
    stop_servers(cluster)

    decided = ticks(cluster, moved)
    assert {t.outcome for t in decided} == {"started"}
    assert_every_second([t for t in decided if t.nominal < changing])
    followed = [t for t in decided if t.nominal > changed]
    assert len(followed) >= 2
    assert all(t.nominal.second % 2 == 0 for t in followed), followed
    assert all(b.nominal - a.nominal == 2 * SECOND for a, b in pairwise(followed)), followed
    assert followed[0].nominal - changed <= 2 * SECOND  # the first tick after it: none missed
    # Stopped: nothing decided, nothing due, after the registration committed.
    assert [t for t in decided if t.fired > stopped] == []
    assert state == [("stopped", None)]
    assert_one_run_per_started_tick(cluster, moved)

    decided = ticks(cluster, paused)
    [skipped] = [t for t in decided if t.outcome != "started"]
    started = [t for t in decided if t.outcome == "started"]
    before = [t for t in started if t.fired <= paused_at]
    after = [t for t in started if t.fired > resuming]
    assert before and after and len(before) + len(after) == len(started), started
    assert_every_second(before)
    assert_every_second(after)
    # Nothing decided while paused, no tick of the paused interval started: one decision on
    # its first tick, when resumed, stands for all of them.
    assert [t for t in decided if paused_at < t.fired < resuming] == []
    assert [t for t in started if paused_at < t.nominal <= resuming] == [], "a burst"
    assert (skipped.outcome, skipped.run_id) == ("skipped_paused", None)
    assert skipped.nominal == before[-1].nominal + SECOND, (skipped, before[-1])
    assert resuming <= skipped.fired <= resumed
    assert "paused by e2e-ops (maintenance)" in skipped.reason, skipped
    assert after[0].nominal - resumed <= SECOND  # the first tick after the resume: none lost
    assert_one_run_per_started_tick(cluster, paused)

    always = ticks(cluster, steady)
    assert_every_second(always)
    assert always[0].nominal == start and always[-1].nominal >= stopped + 2 * SECOND
    assert {t.outcome for t in always} == {"started"}
