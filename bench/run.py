"""Squid Mesh benchmark: `make bench` (or `python -m bench.run`).

Starts the embedded Postgres (fsync on) and Redis, a server process and 2 worker processes, and
measures:
  (a) throughput: N runs of a 3-step no-op workflow started concurrently (all at once, unless
      --concurrency caps the StartRuns in flight) → runs/s, steps/s;
  (b) latency: 1-step runs started one at a time, StartRun → completion seen on WatchRun;
  (c) the same 3-step workload as a raw taskiq chain on the same Redis, with 2 consumer
      processes, kicked 64 at a time (its fastest), and the ratio of (a) to it;
  (d) per-step overhead: 10-step sequential runs (s1 -> s2 -> ... -> s10) started one at a
      time, StartRun → completion latency / 10 per run → p50, p99;
  (e) throughput under failures: (a) again with a 3-step workflow whose steps fail their first
      attempt for a deterministic 10% of (run, step) pairs and are retried after a fixed 10 ms
      backoff → completed steps/s (attempts not counted) as a percentage of (a). It checks that
      every run completed and that exactly the planned attempts failed.
  (f) approvals: 1,000 runs of a task, an approval and a task, started at once, each approved
      by the benchmark as soon as it waits → runs/s, and approve → next step started p50, p99
      (`bench.approvals`).
(b) and (d) run first, on a quiet system; then (a), (e) and (c) run in interleaved rounds
(--rounds, default 5) and their medians are reported; (f) runs last.
(a), (d) and (e) also say which share of the attempts were handed off (run by the worker that
reported the previous step, without going through Redis; `--no-handoff` turns that off).
The last line is `throughput_ratio=R steps_per_s=S p50_ms=P p99_ms=Q step_overhead_p50_ms=O
failing_throughput_pct=F approval_runs_per_s=A approve_next_p50_ms=N approve_next_p99_ms=M`
(on one line)."""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg
from redis.asyncio import Redis
from squidmesh.v1 import run_pb2

from bench.approvals import approval_workload
from bench.cluster import LOG_DIR, bench_cluster
from bench.taskiq_chain import COUNTER, make_broker, register
from bench.workflows import (
    FAIL_PERCENT,
    FLAKY_RETRY,
    FLAKY_STEPS,
    NOOP10_STEPS,
    RETRY_DELAY_MS,
    approval,
    fails_first_attempt,
    flaky3,
    noop1,
    noop3,
    noop10,
)
from server.store.db import libpq_url
from tests.support import wait_for
from worker_sdk import AsyncClient, Client, Workflow

REPO = Path(__file__).resolve().parents[1]


async def throughput(
    address: str, database_url: str, workflow: str, runs: int, concurrency: int
) -> tuple[float, list[str]]:
    """Seconds from the first StartRun to the last run's completion (server clock), and the
    ids of the runs."""
    sem = asyncio.Semaphore(concurrency)
    async with AsyncClient(address) as client:

        async def start() -> str:
            async with sem:
                return (await client.start_run(workflow, {})).id

        run_ids = await asyncio.gather(*(start() for _ in range(runs)))
    async with await psycopg.AsyncConnection.connect(libpq_url(database_url)) as conn:
        while True:
            row = await (
                await conn.execute(
                    "SELECT count(*) FILTER (WHERE status = 'completed'), "
                    "count(*) FILTER (WHERE status NOT IN "
                    "('completed', 'pending', 'running', 'retrying')), "
                    "extract(epoch FROM max(ended_at) - min(created_at)) "
                    "FROM runs WHERE id = ANY(%s::uuid[])",
                    (run_ids,),
                )
            ).fetchone()
            assert row is not None
            done, bad, elapsed = row
            if bad:
                raise RuntimeError(f"{bad} {workflow} runs did not complete")
            if done == runs:
                return float(elapsed), run_ids
            await asyncio.sleep(0.05)


@dataclass(frozen=True)
class Throughput:
    runs: int
    steps_per_run: int
    seconds: float
    run_ids: list[str]
    cpu_s: list[float]
    """CPU seconds used meanwhile by the server, then by each worker."""
    handed_off: float
    """The share of attempts handed to their worker in a result's answer (not published)."""

    @property
    def steps_per_s(self) -> float:
        return self.runs * self.steps_per_run / self.seconds

    def describe(self) -> str:
        steps = self.runs * self.steps_per_run
        return (
            f"{self.runs} runs x {self.steps_per_run} steps in {self.seconds:.2f}s: "
            f"{self.runs / self.seconds:.0f} runs/s, {self.steps_per_s:.0f} steps/s "
            f"(CPU per step: server {self.cpu_s[0] * 1000 / steps:.2f} ms, "
            f"workers {sum(self.cpu_s[1:]) * 1000 / steps:.2f} ms; "
            f"{100 * self.handed_off:.0f}% of attempts handed off)"
        )


def measure_throughput(
    pids: list[int],
    address: str,
    database_url: str,
    workflow: Workflow,
    runs: int,
    concurrency: int,
) -> Throughput:
    """`throughput` of a sequential `workflow`, with the CPU time the processes `pids` (server
    first) used meanwhile."""
    cpu_before = [_cpu_seconds(pid) for pid in pids]
    seconds, run_ids = asyncio.run(
        throughput(address, database_url, workflow.name, runs, concurrency)
    )
    cpu = [_cpu_seconds(pid) - b for pid, b in zip(pids, cpu_before, strict=True)]
    handed_off = handed_off_share(database_url, run_ids)
    return Throughput(runs, len(workflow.step_names), seconds, run_ids, cpu, handed_off)


def handed_off_share(database_url: str, run_ids: list[str]) -> float:
    """The share of the runs' attempts that were handed off rather than published."""
    with psycopg.connect(libpq_url(database_url)) as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE handoff_from IS NOT NULL), count(*) "
            "FROM attempts WHERE run_id = ANY(%s::uuid[])",
            (run_ids,),
        ).fetchone()
    assert row is not None
    return int(row[0]) / max(int(row[1]), 1)


def failed_attempts(database_url: str, run_ids: list[str]) -> int:
    """The runs' attempts that failed."""
    with psycopg.connect(libpq_url(database_url)) as conn:
        row = conn.execute(
            "SELECT count(*) FROM attempts WHERE run_id = ANY(%s::uuid[]) AND status = 'failed'",
            (run_ids,),
        ).fetchone()
    assert row is not None
    return int(row[0])


def latency(address: str, workflow: str, samples: int) -> tuple[list[float], list[str]]:
    """Milliseconds from calling StartRun to the end of its WatchRun stream, one run at a time;
    and the ids of the runs."""
    out, run_ids = [], []
    with Client(address) as client:
        for _ in range(samples):
            t0 = time.perf_counter()
            run = client.start_run(workflow, {})
            for _message in client.watch_run(run.id, after_sequence=0):
                pass
            out.append((time.perf_counter() - t0) * 1000)
            run_ids.append(run.id)
            final = client.get_run(run.id)
            assert final.status == run_pb2.RUN_STATUS_COMPLETED
    return out, run_ids


async def taskiq_chain(redis_url: str, chains: int, log_dir: Path) -> float:
    """Seconds for `chains` 3-task chains on 2 raw taskiq consumer processes."""
    stream = f"bench:chain:{uuid.uuid4().hex[:6]}"
    redis = Redis.from_url(redis_url)
    await redis.delete(COUNTER)
    consumers = [
        subprocess.Popen(  # noqa: ASYNC220 (started once, before the clock starts)
            [sys.executable, "-m", "bench.taskiq_chain", redis_url, stream],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=(log_dir / f"chain-{i}.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        for i in range(2)
    ]
    broker = make_broker(redis_url, stream)
    register(broker, redis_url)
    await broker.startup()
    await asyncio.sleep(1.0)  # consumers up and their group declared
    try:
        t0 = time.perf_counter()
        step1 = broker.find_task("chain.step1")
        assert step1 is not None
        sem = asyncio.Semaphore(64)  # its fastest: 256 or all 2,000 at once measured 5-10% slower

        async def kick(i: int) -> None:
            async with sem:
                await step1.kiq(i)

        await asyncio.gather(*(kick(i) for i in range(chains)))
        while int(await redis.get(COUNTER) or 0) < chains:  # noqa: ASYNC110 (another process)
            await asyncio.sleep(0.01)
        return time.perf_counter() - t0
    finally:
        for c in consumers:
            c.terminate()
            c.wait()
        await broker.shutdown()
        await redis.aclose()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--latency-samples", type=int, default=200)
    parser.add_argument(
        "--overhead-samples", type=int, default=100, help="10-step runs measured in (d)"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=0,
        help="StartRun calls in flight in (a) and (e); 0 (the default): all runs at once",
    )
    parser.add_argument(
        "--rounds", type=int, default=5, help="rounds of (a), (e) and (c); medians are reported"
    )
    parser.add_argument("--approval-runs", type=int, default=1000, help="runs measured in (f)")
    parser.add_argument("--worker-concurrency", type=int, default=64)
    parser.add_argument("--db-pool-size", type=int, default=20)
    parser.add_argument("--data-dir", type=Path, default=REPO / "data" / "bench")
    parser.add_argument(
        "--no-handoff",
        action="store_true",
        help="publish every attempt (SQUIDMESH_HANDOFF=false) instead of handing the next one "
        "to the worker that reported the previous result",
    )
    args = parser.parse_args()
    concurrency = args.concurrency or args.runs

    with bench_cluster(
        args.data_dir,
        SQUIDMESH_DB_POOL_SIZE=str(args.db_pool_size),
        SQUIDMESH_HANDOFF="false" if args.no_handoff else "true",
    ) as cluster:
        server, database_url = cluster.server, cluster.database_url
        for _ in range(2):
            cluster.start_worker("bench.workflows", concurrency=args.worker_concurrency)
        with Client(server.address) as client:
            wait_for(lambda: _registered(client), 60, "bench workflows registered", every=0.2)

        # Latency first, on a quiet system (after the rounds, autovacuum is still busy).
        samples, _ = latency(server.address, noop1.name, args.latency_samples)
        p50 = statistics.median(samples)
        p99 = statistics.quantiles(samples, n=100)[98]
        overhead, overhead_runs = latency(server.address, noop10.name, args.overhead_samples)
        per_step = [ms / NOOP10_STEPS for ms in overhead]
        overhead_handed_off = handed_off_share(database_url, overhead_runs)
        overhead_p50 = statistics.median(per_step)
        overhead_p99 = statistics.quantiles(per_step, n=100)[98]

        pids = [p.proc.pid for p in cluster.processes]
        # (a), (e) and (c) take a few seconds each on a machine whose speed drifts: they run in
        # rounds, interleaved, and the medians are reported.
        plain: list[Throughput] = []
        failing: list[Throughput] = []
        chain_rates: list[float] = []
        for round_ in range(1, args.rounds + 1):
            # Alternate which goes first: the one after the other meets the autovacuum of the
            # first one's dead rows.
            for workflow in (noop3, flaky3) if round_ % 2 else (flaky3, noop3):
                measured = measure_throughput(
                    pids, server.address, database_url, workflow, args.runs, concurrency
                )
                if workflow is noop3:
                    plain.append(measured)
                    print(f"  round {round_} (a): {measured.describe()}", flush=True)
                else:
                    failing.append(measured)
                    failed = check_failures(database_url, measured)
                    print(
                        f"  round {round_} (e): {measured.describe()}; {failed} failed attempts",
                        flush=True,
                    )
            chain_s = asyncio.run(taskiq_chain(cluster.redis_url, args.runs, LOG_DIR))
            chain_rates.append(3 * args.runs / chain_s)
            print(
                f"  round {round_} (c): {args.runs} chains x 3 tasks in {chain_s:.2f}s: "
                f"{chain_rates[-1]:.0f} tasks/s",
                flush=True,
            )
        a, e = _median(plain), _median(failing)
        chain_steps = statistics.median(chain_rates)
        steps_per_s = a.steps_per_s
        ratio = steps_per_s / chain_steps
        failing_pct = 100 * e.steps_per_s / steps_per_s
        print(f"(a) throughput (median of {args.rounds} rounds): {a.describe()}", flush=True)
        print(
            f"(b) latency: {len(samples)} 1-step runs one at a time: p50 {p50:.1f} ms, "
            f"p99 {p99:.1f} ms",
            flush=True,
        )
        print(
            f"(c) raw taskiq chain (median of {args.rounds} rounds): {args.runs} chains x 3 "
            f"tasks: {chain_steps:.0f} tasks/s; ratio {ratio:.2f}",
            flush=True,
        )
        print(
            f"(d) per-step overhead: {len(per_step)} {NOOP10_STEPS}-step runs one at a time, "
            f"run latency / {NOOP10_STEPS}: p50 {overhead_p50:.2f} ms, "
            f"p99 {overhead_p99:.2f} ms ({100 * overhead_handed_off:.0f}% of attempts handed off)",
            flush=True,
        )
        print(
            f"(e) throughput (median of {args.rounds} rounds), {FAIL_PERCENT}% of steps failing "
            f"their first attempt, retried after a {FLAKY_RETRY.backoff} {RETRY_DELAY_MS} ms "
            f"backoff (max_attempts={FLAKY_RETRY.max_attempts}): {e.describe()}; "
            f"{failing_pct:.0f}% of (a)",
            flush=True,
        )

        f = asyncio.run(
            approval_workload(server.address, database_url, approval.name, args.approval_runs)
        )
        print(f"(f) approvals: {f.describe()}", flush=True)

        print(
            f"throughput_ratio={ratio:.2f} steps_per_s={steps_per_s:.0f} "
            f"p50_ms={p50:.1f} p99_ms={p99:.1f} step_overhead_p50_ms={overhead_p50:.2f} "
            f"failing_throughput_pct={failing_pct:.0f} approval_runs_per_s={f.runs_per_s:.0f} "
            f"approve_next_p50_ms={f.p50_ms:.1f} approve_next_p99_ms={f.p99_ms:.1f}"
        )
        return 0


def check_failures(database_url: str, failing: Throughput) -> int:
    """The failed attempts of (e)'s runs, checked: exactly the planned ones, about
    FAIL_PERCENT % of the steps."""
    steps = len(FLAKY_STEPS) * failing.runs
    failed = failed_attempts(database_url, failing.run_ids)
    planned = sum(
        fails_first_attempt(run_id, step) for run_id in failing.run_ids for step in FLAKY_STEPS
    )
    if failed != planned:
        raise RuntimeError(f"{failed} attempts failed, {planned} were planned to")
    tolerance = 5 * (steps * FAIL_PERCENT / 100 * (1 - FAIL_PERCENT / 100)) ** 0.5 + 1
    if abs(failed - steps * FAIL_PERCENT / 100) > tolerance:
        raise RuntimeError(f"{failed} failed attempts is not about {FAIL_PERCENT}% of {steps}")
    return failed


def _median(measured: list[Throughput]) -> Throughput:
    """The measurement with the median steps/s (the lower one of the two middle ones)."""
    return sorted(measured, key=lambda t: t.steps_per_s)[(len(measured) - 1) // 2]


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _registered(client: Client) -> bool:
    try:
        for workflow in (noop1, noop3, noop10, flaky3, approval):
            client.get_workflow(workflow.name)
        return True
    except Exception:
        return False


if __name__ == "__main__":
    sys.exit(main())
