"""Schedules with real server processes on the embedded Postgres and Redis: exactly one run per
tick across two replicas (one of them SIGKILLed and restarted), ticks missed while no server
ran decided by the missed-tick policy, the overlap policy with a run held by a worker, and new
versions, pause and resume moving or stopping a schedule.

Windows are measured on the database's clock and waits are for what the database records
(schedule_support), so a slow machine makes these tests slower, not red. Runs of log-step
workflows need no worker; the overlap test holds runs in a worker step (schedule_flows)."""

from __future__ import annotations

from datetime import UTC, timedelta
from functools import partial
from itertools import pairwise
from pathlib import Path

import grpc
from squidmesh.v1 import schedule_pb2, schedule_service_pb2, workflow_pb2
from squidmesh.v1.schedule_service_pb2_grpc import ScheduleServiceStub

from server.engine.schedule.due_ticks import ON_TIME_GRACE
from tests.e2e.conftest import Cluster
from tests.e2e.marks import read_marks
from tests.e2e.schedule_flows import held, held_definition, release, release_all
from tests.e2e.schedule_support import (
    SECOND,
    WAIT_S,
    assert_every_second,
    assert_one_run_per_started_tick,
    beat,
    cron,
    db_now,
    rows,
    run_ended,
    scheduled_runs,
    sleep_until,
    start_replicas,
    stop_servers,
    ticks,
    ticks_decided_after,
    ticks_until,
)
from tests.support import wait_for
from worker_sdk import Client

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
    for first in firsts.values():  # each held handler ran once, on its first attempt
        assert read_marks(tmp_path, "hold", str(first.run_id)) == ["1"]
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
