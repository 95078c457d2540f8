"""Chaos benchmark: `make chaos` (or `python -m bench.chaos [--runs N] [--load-seconds S]
[--fault-every F]`).

Starts the embedded Postgres and Redis (in data/chaos), a server process and two worker
processes serving `chaos_order` (`bench.chaos_workflow`: four handler steps and a wait; some
first attempts fail on purpose and are retried). Then, for --load-seconds, it starts --runs
runs at an even pace (each with an idempotency key, repeated until the server accepts it),
while every --fault-every seconds a fault hits, in turn (`bench.chaos_faults`): a worker
SIGKILLed (and a new one started), Redis flushed, the server SIGKILLed and started again,
Postgres stopped at once and started again, Redis SIGKILLed and restarted empty. It waits for
every run to end, up to --stuck-after seconds after the last fault, and audits Postgres and the
handler ledger (`bench.chaos_audit`).

It prints each fault, the details, and last one line:
`runs=N lost=0 applied_twice=0 stuck=0 handler_reruns=K recovery_max_s=S`.
The exit status is 1 when lost, applied_twice or stuck is not 0. Logs go to bench/results/."""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

import grpc

from bench.chaos_audit import Audit, audit, run_statuses, snapshot, unfinished
from bench.chaos_faults import SCHEDULE, Fault, Injected, Injector
from bench.chaos_workflow import HANDLER_STEPS, LEDGER_ENV, chaos_order, read_ledger
from bench.cluster import LOG_DIR, BenchCluster, bench_cluster
from tests.support import WorkerProcess, wait_for
from worker_sdk import AsyncClient, Client

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = chaos_order.name


async def start_runs(
    address: str, keys: list[str], seconds: float, give_up_s: float
) -> Counter[str]:
    """Starts a run per key, evenly over `seconds`, each repeated with its key until the server
    accepts it (or `give_up_s` passed); returns the errors met, by status code."""
    errors: Counter[str] = Counter()
    in_flight = asyncio.Semaphore(128)
    async with AsyncClient(address, timeout=10) as client:

        async def start(key: str) -> None:
            deadline = time.monotonic() + give_up_s
            backoff = 0.1
            async with in_flight:
                while True:
                    try:
                        await client.start_run(WORKFLOW, {}, idempotency_key=key)
                        return
                    except grpc.aio.AioRpcError as exc:
                        errors[exc.code().name] += 1
                    if time.monotonic() > deadline:
                        return  # counted as missing by the audit
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)

        began = time.monotonic()
        tasks = []
        for i, key in enumerate(keys):
            await asyncio.sleep(max(0.0, began + i * seconds / len(keys) - time.monotonic()))
            tasks.append(asyncio.create_task(start(key)))
        await asyncio.gather(*tasks)
    return errors


async def inject_faults(
    injector: Injector,
    database_url: str,
    schedule: list[Fault],
    timing: tuple[float, float, float],
) -> list[Injected]:
    """The faults of `schedule` in turn, round and round: with `timing` (warmup, every,
    until), one every `every` seconds from `warmup` on, while before `until`."""
    warmup_s, every_s, until_s = timing
    injected: list[Injected] = []
    began, began_epoch = time.monotonic(), time.time()  # the epoch: what faults are stamped with
    at = warmup_s
    while at < until_s:
        await asyncio.sleep(max(0.0, began + at - time.monotonic()))
        fault = schedule[len(injected) % len(schedule)]
        before = await asyncio.to_thread(snapshot, database_url, WORKFLOW)
        done = await asyncio.to_thread(injector.inject, fault)
        print(
            f"  {done.at - began_epoch:5.1f}s {fault.value}: took {done.took_s:.2f}s, "
            f"stranded {len(done.stranded)} attempts ({before})",
            flush=True,
        )
        injected.append(done)
        at += every_s
    return injected


async def load_and_faults(
    cluster: BenchCluster, injector: Injector, keys: list[str], args: argparse.Namespace
) -> tuple[Counter[str], list[Injected]]:
    starts = asyncio.create_task(
        start_runs(cluster.server.address, keys, args.load_seconds, args.stuck_after)
    )
    faults = await inject_faults(
        injector,
        cluster.database_url,
        args.faults,
        (args.warmup_seconds, args.fault_every, args.load_seconds),
    )
    return await starts, faults


def describe(
    audit_: Audit, start_errors: Counter[str], load_began: float, elapsed_s: float
) -> list[str]:
    """The details: each fault's recovery (at seconds since the load began, `load_began`
    in epoch seconds), the errors StartRun met, what was lost."""
    lines = [
        "recovery (seconds from the fault until a step completed, and until the work it "
        "stranded was taken up):"
    ]
    for r in audit_.recoveries:
        progress = "-" if r.progress_s is None else f"{r.progress_s:.1f}s"
        stranded = "-" if r.stranded_s is None else f"{r.stranded_s:.1f}s"
        lines.append(
            f"  {r.injected.at - load_began:5.1f}s {r.injected.fault.value:<19} "
            f"step completed after {progress:>6}, stranded work taken up after {stranded:>6}"
        )
    return [
        *lines,
        f"StartRun errors met and repeated: {dict(start_errors) or 'none'}",
        f"lost: {audit_.missing} missing, not completed: {audit_.not_completed or 'none'}; "
        f"completed steps with no execution in the ledger: {audit_.unrecorded_steps}",
        f"elapsed: {elapsed_s:.0f}s",
    ]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3000)
    parser.add_argument(
        "--load-seconds", type=float, default=60.0, help="runs are started over this long"
    )
    parser.add_argument("--warmup-seconds", type=float, default=5.0, help="before the first fault")
    parser.add_argument("--fault-every", type=float, default=5.0, help="seconds between faults")
    parser.add_argument(
        "--stuck-after",
        type=float,
        default=120.0,
        help="runs not ended this long after the last fault are stuck",
    )
    parser.add_argument(
        "--heartbeat-timeout-ms",
        type=int,
        default=3000,
        help="the server's default lease (SQUIDMESH_HEARTBEAT_TIMEOUT_MS; its own default: "
        "10000): a killed worker's attempts are taken up this long after their last heartbeat",
    )
    parser.add_argument(
        "--faults",
        type=lambda names: [Fault(name) for name in names.split(",")],
        default=list(SCHEDULE),
        help="the faults to inject in turn, comma-separated (default: "
        + ",".join(f.value for f in SCHEDULE)
        + ")",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--worker-concurrency", type=int, default=16)
    parser.add_argument("--data-dir", type=Path, default=REPO / "data" / "chaos")
    args = parser.parse_args()

    ledger = LOG_DIR / "chaos-ledger"
    shutil.rmtree(ledger, ignore_errors=True)
    ledger.mkdir(parents=True)
    keys = [f"chaos-{i}" for i in range(args.runs)]
    began = time.monotonic()
    with bench_cluster(
        args.data_dir,
        SQUIDMESH_LOG_LEVEL="info",
        SQUIDMESH_HEARTBEAT_TIMEOUT_MS=str(args.heartbeat_timeout_ms),
    ) as cluster:

        def start_worker() -> WorkerProcess:
            return cluster.start_worker(
                "bench.chaos_workflow",
                concurrency=args.worker_concurrency,
                env={LEDGER_ENV: str(ledger)},
            )

        for _ in range(args.workers):
            start_worker()
        with Client(cluster.server.address) as client:
            wait_for(lambda: _registered(client), 60, "chaos_order registered", every=0.2)
        print(
            f"chaos: {args.runs} runs over {args.load_seconds:.0f}s, a fault every "
            f"{args.fault_every:.0f}s from {args.warmup_seconds:.0f}s",
            flush=True,
        )
        injector = Injector(cluster, start_worker)
        load_began = time.time()
        start_errors, faults = asyncio.run(load_and_faults(cluster, injector, keys, args))
        deadline = time.monotonic() + args.stuck_after
        next_report = time.monotonic() + 5
        while time.monotonic() < deadline:
            statuses = run_statuses(cluster.database_url, WORKFLOW)
            if len(statuses) == len(keys) and not unfinished(statuses):
                break
            if time.monotonic() >= next_report:
                print(f"  waiting: {snapshot(cluster.database_url, WORKFLOW)}", flush=True)
                next_report += 5
            time.sleep(0.5)
        result = audit(
            cluster.database_url,
            WORKFLOW,
            keys,
            HANDLER_STEPS,
            read_ledger(ledger),
            faults,
        )
    for line in describe(result, start_errors, load_began, time.monotonic() - began):
        print(line, flush=True)
    print(
        f"runs={result.runs} lost={result.lost} applied_twice={result.applied_twice} "
        f"stuck={result.stuck} handler_reruns={result.handler_reruns} "
        f"recovery_max_s={result.recovery_max_s:.1f}",
        flush=True,
    )
    return 0 if result.lost == result.applied_twice == result.stuck == 0 else 1


def _registered(client: Client) -> bool:
    try:
        client.get_workflow(WORKFLOW)
        return True
    except grpc.RpcError:
        return False


if __name__ == "__main__":
    sys.exit(main())
