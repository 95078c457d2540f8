"""Schedules at scale: `make bench-schedules` (or `python -m bench.schedules`).

Starts the embedded Postgres (fsync on; commit timestamps on, see below) and Redis and a server
process, creates --schedules active schedules (default 10,000) that each fire every minute, and
measures two shapes, one after the other, on the same schedules:
  spread: schedule i fires at second i % 60 (`S * * * * *`): ~167 ticks a second;
  herd:   all of them at `* * * * *`: 10,000 ticks due at second 0 of each minute.
Each tick starts a run of a one-step workflow (a log step: the run starts, runs and ends in the
server, in the tick's transaction; no worker). The schedules are created as a user would, with
CreateSchedule over gRPC; herd changes their spec with UpdateSchedule (each ticks from the first
tick after now).

Each shape is measured over --minutes whole minutes of nominal tick times, after a warm-up
(spread: at least --warmup seconds since the first schedule was created and 20 s since the
last; herd: 20 s after the last change, the server warm from spread):
- fire delay: schedule_ticks.fired_at - nominal_at (fired_at is Postgres' now() in the claim
  transaction; runs.created_at is the same instant, so it is not shown twice) and committed -
  nominal, the commit time of that transaction (`track_commit_timestamp`): when the tick's run
  exists for everyone. p50, p99 and max, with each tick's outcome (a tick decided more than 2 s
  late counts as missed, see ON_TIME_GRACE, and the missed-tick policy SKIP starts nothing);
- CPU over the window as a share of one core: the server process (all its threads, from
  /proc), of which the timer loop (its `timer_loop_usage` debug line: the thread's CPU inside
  each iteration, sleeps excluded; `server.engine.usage` says why it is an upper bound), of
  which firing schedules, of which the ticks' runs' own work (building the run and its log
  step, its log line); and Postgres (every process of the cluster).
The server logs at debug level for the usage line, so its log also has each run's log step line
(as at the default, info). The last line is `schedules=N spread_p50_ms=.. spread_p99_ms=..
spread_commit_p99_ms=.. spread_server_cpu_pct=.. spread_timer_cpu_pct=.. herd_p50_ms=..
herd_p99_ms=.. herd_max_ms=.. herd_started_pct=.. herd_server_cpu_pct=.. herd_timer_cpu_pct=..`
(the shapes measured). About 8 minutes with both shapes (creating the schedules takes about
one): the ticks follow the wall clock.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import psycopg
from google.protobuf import field_mask_pb2
from grpc import aio
from squidmesh.client import Client
from squidmesh.v1 import schedule_pb2, schedule_service_pb2, workflow_pb2
from squidmesh.v1.schedule_service_pb2_grpc import ScheduleServiceStub

from bench.cluster import bench_cluster
from server.embedded import EmbeddedServices
from server.store.db import libpq_url

if TYPE_CHECKING:  # the async stub type exists only in the generated .pyi
    from squidmesh.v1.schedule_service_pb2_grpc import ScheduleServiceAsyncStub

REPO = Path(__file__).resolve().parents[1]
PREFIX = "sb_"
"""Of the benchmark's workflow and schedules."""
_IN_FLIGHT = 8
"""CreateSchedule / UpdateSchedule calls at a time (they are CPU-bound in the server: 8 were
faster than 32)."""
_FULL_LOAD_S = 20
"""Seconds of ticking with every schedule in place before a shape's first measured minute."""


WORKFLOW = f"{PREFIX}tick"


def workflow() -> workflow_pb2.WorkflowDefinition:
    """The workflow every schedule starts: one log step (its run ends in its tick's
    transaction)."""
    d = workflow_pb2.WorkflowDefinition(name=WORKFLOW)
    d.triggers.add(name="manual", manual=workflow_pb2.ManualTrigger())
    d.steps.add(name="note", log=workflow_pb2.LogStep(message="tick"))
    return d


def spec(shape: str, i: int) -> schedule_pb2.ScheduleSpec:
    """Schedule i's: at second i % 60 of every minute (spread), or at second 0 (herd)."""
    return schedule_pb2.ScheduleSpec(
        cron_expression=f"{i % 60} * * * * *" if shape == "spread" else "* * * * *"
    )


async def _each_schedule(
    address: str,
    schedules: int,
    call: Callable[[ScheduleServiceAsyncStub, int], Awaitable[object]],
) -> None:
    """`call` for schedule 0 .. schedules - 1, `_IN_FLIGHT` at a time."""
    sem = asyncio.Semaphore(_IN_FLIGHT)
    async with aio.insecure_channel(address) as channel:
        stub = ScheduleServiceStub(channel)

        async def one(i: int) -> None:
            async with sem:
                await call(stub, i)

        await asyncio.gather(*(one(i) for i in range(schedules)))


async def create_schedules(address: str, shape: str, schedules: int) -> None:
    """CreateSchedule for each."""
    await _each_schedule(
        address,
        schedules,
        lambda stub, i: stub.CreateSchedule(
            schedule_service_pb2.CreateScheduleRequest(
                schedule_id=f"{PREFIX}{i:05d}", workflow=WORKFLOW, spec=spec(shape, i)
            )
        ),
    )


async def respec_schedules(address: str, shape: str, schedules: int) -> None:
    """UpdateSchedule of each one's spec (it ticks from the first tick after now)."""
    await _each_schedule(
        address,
        schedules,
        lambda stub, i: stub.UpdateSchedule(
            schedule_service_pb2.UpdateScheduleRequest(
                schedule=schedule_pb2.Schedule(id=f"{PREFIX}{i:05d}", spec=spec(shape, i)),
                update_mask=field_mask_pb2.FieldMask(paths=["spec"]),
            )
        ),
    )


@dataclass(frozen=True)
class CpuSample:
    at: float
    server_s: float
    postgres_s: float
    loop: dict[str, float]
    """The last `timer_loop_usage` totals in the server's log."""


class Meter:
    """CPU seconds so far of the server process, of the Postgres cluster and of the loop."""

    def __init__(self, server_pid: int, server_log: Path, data_dir: Path) -> None:
        self._server = psutil.Process(server_pid)
        self._log = server_log
        pid_file = data_dir / "postgres" / "postmaster.pid"
        self._postmaster = psutil.Process(int(pid_file.read_text().split()[0]))

    def sample(self) -> CpuSample:
        server = self._server.cpu_times()
        postmaster = self._postmaster.cpu_times()
        # Backends that ended are in the postmaster's children times once it reaped them.
        postgres = sum(postmaster[:4])
        for child in self._postmaster.children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                postgres += sum(child.cpu_times()[:2])
        return CpuSample(time.time(), server.user + server.system, postgres, self._loop_usage())

    def _loop_usage(self) -> dict[str, float]:
        last: dict[str, float] = {}
        with self._log.open("rb") as f:
            for line in f:
                if b'"timer_loop_usage"' in line:
                    record = json.loads(line)
                    last = {k: v for k, v in record.items() if isinstance(v, int | float)}
        return last


@dataclass(frozen=True)
class Figures:
    shape: str
    minutes: int
    ticks: int
    outcomes: dict[str, int]
    fired_ms: list[float]
    committed_ms: list[float]
    runs_completed: int
    seconds: float
    cpu: dict[str, float]
    """CPU seconds over the window: server, loop, schedules, tick_runs, postgres."""

    def pct(self, what: str) -> float:
        return 100 * self.cpu[what] / self.seconds

    @property
    def started_pct(self) -> float:
        return 100 * self.outcomes.get("started", 0) / max(self.ticks, 1)


def _percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))] if ordered else math.nan


def _sleep_until(epoch_s: float) -> None:
    while (left := epoch_s - time.time()) > 0:
        time.sleep(min(left, 1.0))


def measure(
    shape: str, first_minute: float, minutes: int, schedules: int, meter: Meter, database_url: str
) -> Figures:
    """The ticks nominally in [first_minute, + minutes) and the CPU used meanwhile (sampled
    half a second before each end, so a herd at the window's end is not in it)."""
    end = first_minute + 60 * minutes
    print(f"  {shape}: measuring the ticks of {_clock(first_minute)}-{_clock(end)} UTC", flush=True)
    _sleep_until(first_minute - 0.5)
    before = meter.sample()
    _sleep_until(end - 0.5)
    after = meter.sample()
    expected = schedules * minutes
    window = (datetime.fromtimestamp(first_minute, UTC), datetime.fromtimestamp(end, UTC))
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        deadline = time.time() + 120
        while True:  # every tick of the window decided (a herd may still be firing)
            row = conn.execute(
                "SELECT count(*) FROM schedule_ticks WHERE schedule_id LIKE %s "
                "AND nominal_at >= %s AND nominal_at < %s",
                (f"{PREFIX}%", *window),
            ).fetchone()
            assert row is not None
            if row[0] >= expected or time.time() > deadline:
                break
            time.sleep(0.5)
        rows = conn.execute(
            "SELECT outcome, extract(epoch FROM fired_at - nominal_at) * 1000, "
            "  extract(epoch FROM pg_xact_commit_timestamp(xmin) - nominal_at) * 1000 "
            "FROM schedule_ticks WHERE schedule_id LIKE %s "
            "AND nominal_at >= %s AND nominal_at < %s",
            (f"{PREFIX}%", *window),
        ).fetchall()
        completed = conn.execute(
            "SELECT count(*) FROM runs WHERE schedule_id LIKE %s AND status = 'completed' "
            "AND schedule_nominal_at >= %s AND schedule_nominal_at < %s",
            (f"{PREFIX}%", *window),
        ).fetchone()
    assert completed is not None
    outcomes: dict[str, int] = {}
    for outcome, _, _ in rows:
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    loop = {k: after.loop.get(k, 0.0) - before.loop.get(k, 0.0) for k in after.loop}
    return Figures(
        shape=shape,
        minutes=minutes,
        ticks=len(rows),
        outcomes=outcomes,
        fired_ms=[float(r[1]) for r in rows],
        committed_ms=[float(r[2]) for r in rows],
        runs_completed=int(completed[0]),
        seconds=after.at - before.at,
        cpu={
            "server": after.server_s - before.server_s,
            "loop": loop.get("cpu_s", 0.0),
            "schedules": loop.get("schedules_cpu_s", 0.0),
            "tick_runs": loop.get("tick_runs_cpu_s", 0.0),
            "postgres": after.postgres_s - before.postgres_s,
        },
    )


def _clock(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%H:%M:%S")


def _next_minute(epoch_s: float) -> float:
    return math.ceil(epoch_s / 60) * 60


def commit_timestamps_on(data_dir: Path) -> None:
    """Turns on track_commit_timestamp in the embedded Postgres of `data_dir` (it needs a
    restart: the bench's cluster starts it again)."""
    services = EmbeddedServices(data_dir)
    urls = services.start()
    try:
        with psycopg.connect(libpq_url(urls.database_url), autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET track_commit_timestamp = on")
    finally:
        services.stop()


def report(figures: list[Figures]) -> None:
    print(
        f"{'shape':<8}{'ticks':>7}{'started':>9}{'missed':>8}"
        f"{'fired-nominal ms p50/p99/max':>31}{'committed-nominal ms p50/p99/max':>35}"
    )
    for f in figures:
        fired = "/".join(f"{_percentile(f.fired_ms, p):.0f}" for p in (0.5, 0.99, 1.0))
        committed = "/".join(f"{_percentile(f.committed_ms, p):.0f}" for p in (0.5, 0.99, 1.0))
        print(
            f"{f.shape:<8}{f.ticks:>7}{f.outcomes.get('started', 0):>9}"
            f"{f.outcomes.get('skipped_missed', 0):>8}{fired:>31}{committed:>35}"
        )
    print(
        f"{'shape':<8}{'window s':>9}{'server':>9}{'timer loop':>12}{'firing':>9}"
        f"{'tick runs':>11}{'postgres':>10}   (CPU, % of one core)"
    )
    for f in figures:
        print(
            f"{f.shape:<8}{f.seconds:>9.1f}{f.pct('server'):>8.1f}%{f.pct('loop'):>11.1f}%"
            f"{f.pct('schedules'):>8.1f}%{f.pct('tick_runs'):>10.1f}%{f.pct('postgres'):>9.1f}%"
        )


def final_line(schedules: int, figures: list[Figures]) -> str:
    parts = [f"schedules={schedules}"]
    for f in figures:
        parts += [
            f"{f.shape}_p50_ms={_percentile(f.fired_ms, 0.5):.0f}",
            f"{f.shape}_p99_ms={_percentile(f.fired_ms, 0.99):.0f}",
        ]
        if f.shape == "spread":
            parts.append(f"spread_commit_p99_ms={_percentile(f.committed_ms, 0.99):.0f}")
        else:
            parts += [
                f"herd_max_ms={max(f.fired_ms):.0f}",
                f"herd_started_pct={f.started_pct:.1f}",
            ]
        parts += [
            f"{f.shape}_server_cpu_pct={f.pct('server'):.1f}",
            f"{f.shape}_timer_cpu_pct={f.pct('loop'):.1f}",
        ]
    return " ".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--schedules", type=int, default=10_000)
    parser.add_argument("--minutes", type=int, default=2, help="measured minutes per shape")
    parser.add_argument(
        "--warmup",
        type=float,
        default=60,
        help="seconds from the first schedule created to spread's measured minutes (at least "
        f"{_FULL_LOAD_S} s after the last)",
    )
    parser.add_argument("--shape", choices=["spread", "herd", "both"], default="both")
    parser.add_argument("--data-dir", type=Path, default=REPO / "data" / "bench-schedules")
    args = parser.parse_args()
    shapes = ["spread", "herd"] if args.shape == "both" else [args.shape]

    commit_timestamps_on(args.data_dir)
    figures: list[Figures] = []
    with bench_cluster(args.data_dir, SQUIDMESH_LOG_LEVEL="debug") as cluster:
        server = cluster.server
        meter = Meter(server.proc.pid, server.log_path, cluster.data_dir)
        with Client(server.address) as client:
            client.register_workflow(workflow())
        for n, shape in enumerate(shapes):
            began = time.time()
            if n == 0:
                asyncio.run(create_schedules(server.address, shape, args.schedules))
                done = "created (CreateSchedule)"
            else:
                asyncio.run(respec_schedules(server.address, shape, args.schedules))
                done = "changed to it (UpdateSchedule)"
            print(
                f"  {shape}: {args.schedules} schedules {done} in {time.time() - began:.1f} s",
                flush=True,
            )
            # Warm-up: ticking started with the first schedule created.
            warm = began + args.warmup if n == 0 else 0
            first = _next_minute(max(warm, time.time() + _FULL_LOAD_S))
            figures.append(
                measure(shape, first, args.minutes, args.schedules, meter, cluster.database_url)
            )
    report(figures)
    problems = [p for f in figures for p in problems_of(f, args.schedules)]
    for problem in problems:
        print(f"FAILED: {problem}")
    print(final_line(args.schedules, figures))
    return 1 if problems else 0


def problems_of(f: Figures, schedules: int) -> list[str]:
    """Every tick of the window decided once, and each started one's run completed."""
    out = []
    if f.ticks != schedules * f.minutes:
        out.append(f"{f.shape}: {f.ticks} ticks decided, {schedules * f.minutes} were due")
    if f.runs_completed != f.outcomes.get("started", 0):
        out.append(
            f"{f.shape}: {f.runs_completed} runs completed, {f.outcomes.get('started')} started"
        )
    return out


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
