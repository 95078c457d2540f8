"""Squid Mesh benchmark: `make bench` (or `python -m bench.run`).

Starts the embedded Postgres (fsync on) and Redis, a server process and 2 worker processes, and
measures:
  (a) throughput: N runs of a 3-step no-op workflow started concurrently → runs/s, steps/s;
  (b) latency: 1-step runs started one at a time, StartRun → completion seen on WatchRun;
  (c) the same 3-step workload as a raw taskiq chain on the same Redis, with 2 consumer
      processes, and the ratio of (a) to it.
The last line is `throughput_ratio=R steps_per_s=S p50_ms=P p99_ms=Q`."""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg
from redis.asyncio import Redis
from squidmesh.v1 import run_pb2

from bench.taskiq_chain import COUNTER, make_broker, register
from server.embedded import EmbeddedServices
from server.store.db import libpq_url
from tests.support import ServerProcess, WorkerProcess, fresh_database, stream_prefix, wait_for
from worker_sdk import AsyncClient, Client

REPO = Path(__file__).resolve().parents[1]


async def throughput(address: str, database_url: str, runs: int, concurrency: int) -> float:
    """Seconds from the first StartRun to the last run's completion (server clock)."""
    sem = asyncio.Semaphore(concurrency)
    async with AsyncClient(address) as client:

        async def start() -> None:
            async with sem:
                await client.start_run("bench_noop3", {})

        await asyncio.gather(*(start() for _ in range(runs)))
    async with await psycopg.AsyncConnection.connect(libpq_url(database_url)) as conn:
        while True:
            row = await (
                await conn.execute(
                    "SELECT count(*) FILTER (WHERE status = 'completed'), "
                    "count(*) FILTER (WHERE status NOT IN ('completed', 'pending', 'running')), "
                    "extract(epoch FROM max(ended_at) - min(created_at)) "
                    "FROM runs WHERE workflow_name = 'bench_noop3'"
                )
            ).fetchone()
            assert row is not None
            done, bad, elapsed = row
            if bad:
                raise RuntimeError(f"{bad} benchmark runs did not complete")
            if done == runs:
                return float(elapsed)
            await asyncio.sleep(0.05)


def latency(address: str, samples: int) -> list[float]:
    """Milliseconds from calling StartRun to the end of its WatchRun stream, one run at a time."""
    out = []
    with Client(address) as client:
        for _ in range(samples):
            t0 = time.perf_counter()
            run = client.start_run("bench_noop1", {})
            for _message in client.watch_run(run.id, after_sequence=0):
                pass
            out.append((time.perf_counter() - t0) * 1000)
            final = client.get_run(run.id)
            assert final.status == run_pb2.RUN_STATUS_COMPLETED
    return out


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
        sem = asyncio.Semaphore(64)

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
    parser.add_argument("--concurrency", type=int, default=64, help="StartRun calls in flight")
    parser.add_argument("--worker-concurrency", type=int, default=64)
    parser.add_argument("--db-pool-size", type=int, default=20)
    parser.add_argument("--data-dir", type=Path, default=REPO / "data" / "bench")
    args = parser.parse_args()

    log_dir = REPO / "bench" / "results"
    log_dir.mkdir(parents=True, exist_ok=True)
    services = EmbeddedServices(args.data_dir)
    urls = services.start()
    processes: list[ServerProcess | WorkerProcess] = []
    try:
        database_url = fresh_database(urls.database_url)
        env = {
            "SQUIDMESH_DATABASE_URL": database_url,
            "SQUIDMESH_REDIS_URL": urls.redis_url,
            "SQUIDMESH_STREAM_PREFIX": stream_prefix(),
            "SQUIDMESH_LOG_LEVEL": "warning",
            "SQUIDMESH_DB_POOL_SIZE": str(args.db_pool_size),
        }
        server = ServerProcess(env, log_dir)
        processes.append(server)
        for _ in range(2):
            processes.append(
                WorkerProcess(
                    "bench.workflows",
                    server.address,
                    log_dir,
                    concurrency=args.worker_concurrency,
                    env={"SQUIDMESH_LOG_LEVEL": "warning"},
                )
            )
        with Client(server.address) as client:
            wait_for(lambda: _registered(client), 60, "bench workflows registered", every=0.2)

        cpu_before = [_cpu_seconds(p.proc.pid) for p in processes]
        elapsed = asyncio.run(throughput(server.address, database_url, args.runs, args.concurrency))
        cpu = [_cpu_seconds(p.proc.pid) - b for p, b in zip(processes, cpu_before, strict=True)]
        runs_per_s = args.runs / elapsed
        steps_per_s = 3 * runs_per_s
        steps = 3 * args.runs
        print(
            f"(a) throughput: {args.runs} runs x 3 steps in {elapsed:.2f}s: "
            f"{runs_per_s:.0f} runs/s, {steps_per_s:.0f} steps/s "
            f"(CPU per step: server {cpu[0] * 1000 / steps:.2f} ms, "
            f"workers {sum(cpu[1:]) * 1000 / steps:.2f} ms)"
        )

        samples = latency(server.address, args.latency_samples)
        p50 = statistics.median(samples)
        p99 = statistics.quantiles(samples, n=100)[98]
        print(
            f"(b) latency: {len(samples)} 1-step runs one at a time: p50 {p50:.1f} ms, "
            f"p99 {p99:.1f} ms"
        )

        chain_s = asyncio.run(taskiq_chain(urls.redis_url, args.runs, log_dir))
        chain_steps = 3 * args.runs / chain_s
        ratio = steps_per_s / chain_steps
        print(
            f"(c) raw taskiq chain: {args.runs} chains x 3 tasks in {chain_s:.2f}s: "
            f"{chain_steps:.0f} tasks/s; ratio {ratio:.2f}"
        )
        print(
            f"throughput_ratio={ratio:.2f} steps_per_s={steps_per_s:.0f} "
            f"p50_ms={p50:.1f} p99_ms={p99:.1f}"
        )
        return 0
    finally:
        for p in reversed(processes):
            p.close()
        services.stop()


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _registered(client: Client) -> bool:
    try:
        client.get_workflow("bench_noop3")
        client.get_workflow("bench_noop1")
        return True
    except Exception:
        return False


if __name__ == "__main__":
    sys.exit(main())
