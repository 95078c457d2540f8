"""ExplainRun latency at scale: `make bench-explain` (or `python -m bench.explain`).

Starts the embedded Postgres and Redis (in data/bench-explain), a server process, registers
four workflows, then fills the database with --runs runs (default 100,000) in mixed states,
inserted in bulk with SQL (a few seconds, instead of hours of real work): completed, failed
after three attempts, cancelled, running on a worker, retrying after a backoff, published and
not claimed, published for a handler no worker serves, waiting on a timer, dependency steps
waiting for a prerequisite, approvals with a vote, pauses and event waits; each with its
steps, attempts, events (a dozen per run, plus progress events on running ones) and waits;
and 20 worker rows, live. Then it calls ExplainRun over gRPC, one call at a time, on a random
sample of runs of every kind (checking each answer's first blocker), and prints p50/p99 per
kind and overall, next to GetRun's of the same runs (called right after each, as a yardstick
of the machine's noise). The last line is `runs=N explain_p50_ms=P explain_p99_ms=Q`.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

import grpc
import psycopg
from squidmesh.client import Client
from squidmesh.v1 import diagnosis_pb2, run_service_pb2
from squidmesh.v1.run_service_pb2_grpc import RunServiceStub

from bench.cluster import bench_cluster
from bench.explain_data import WORKERS, fill, keep_live, kinds, workers, workflows
from server.store.db import libpq_url

REPO = Path(__file__).resolve().parents[1]


def _percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=100_000, help="runs in the database")
    parser.add_argument("--samples", type=int, default=300, help="ExplainRun calls per kind")
    parser.add_argument(
        "--warmup",
        type=int,
        default=600,
        help="unmeasured calls first: each of the server's pooled connections prepares the "
        "statement after 5 uses, and Postgres settles on its plan after 5 more (a server that "
        "has been up a while is in that state)",
    )
    parser.add_argument("--data-dir", type=Path, default=REPO / "data" / "bench-explain")
    args = parser.parse_args()
    every_kind = kinds()
    # The server's reconciler must leave the rows alone while they are measured: nothing
    # re-publishes the "published" attempts, and running ones hold hour-long leases.
    with bench_cluster(args.data_dir, SQUIDMESH_DISPATCH_TIMEOUT_MS="3600000") as cluster:
        with Client(cluster.server.address) as client:
            for definition in workflows():
                client.register_workflow(definition)
        with psycopg.connect(libpq_url(cluster.database_url), autocommit=True) as conn:
            ids: dict[str, int] = dict(conn.execute("SELECT name, id FROM workflows").fetchall())
            began = time.perf_counter()
            with conn.transaction():
                runs = fill(conn, every_kind, args.runs, ids)
                workers(conn)
            conn.execute("VACUUM ANALYZE")
            counts = conn.execute(
                "SELECT (SELECT count(*) FROM runs), (SELECT count(*) FROM steps), "
                "(SELECT count(*) FROM attempts), (SELECT count(*) FROM run_events), "
                "(SELECT count(*) FROM waits)"
            ).fetchone()
            assert counts is not None
            print(
                f"filled in {time.perf_counter() - began:.1f} s: {counts[0]} runs, {counts[1]} "
                f"steps, {counts[2]} attempts, {counts[3]} events, {counts[4]} waits, "
                f"{WORKERS} workers"
            )
            rng = random.Random(7)
            latencies: dict[str, list[float]] = {}
            baseline: list[float] = []
            """GetRun of the same run right after: what one read of a run costs on this
            machine now, for comparison."""
            with grpc.insecure_channel(cluster.server.address) as channel:
                stub = RunServiceStub(channel)
                everything = [run_id for ids_of_kind in runs.values() for run_id in ids_of_kind]
                for run_id in rng.sample(everything, args.warmup):  # see --warmup
                    stub.ExplainRun(run_service_pb2.ExplainRunRequest(run_id=run_id))
                calls = [
                    (kind, run_id)
                    for kind in every_kind
                    for run_id in rng.sample(
                        runs[kind.name], min(args.samples, len(runs[kind.name]))
                    )
                ]
                rng.shuffle(calls)
                for i, (kind, run_id) in enumerate(calls):
                    if i % 200 == 0:
                        keep_live(conn)
                    t0 = time.perf_counter()
                    answer = stub.ExplainRun(run_service_pb2.ExplainRunRequest(run_id=run_id))
                    t1 = time.perf_counter()
                    stub.GetRun(run_service_pb2.GetRunRequest(run_id=run_id))
                    t2 = time.perf_counter()
                    latencies.setdefault(kind.name, []).append((t1 - t0) * 1000)
                    baseline.append((t2 - t1) * 1000)
                    first = diagnosis_pb2.BlockerCode.Name(answer.blockers[0].code)
                    assert first == f"BLOCKER_CODE_{kind.expected}", (kind.name, run_id, answer)
    every = [ms for samples in latencies.values() for ms in samples]
    print(f"{'kind':<14}{'calls':>7}{'p50 ms':>9}{'p99 ms':>9}")
    for kind in every_kind:
        samples = latencies[kind.name]
        print(
            f"{kind.name:<14}{len(samples):>7}{statistics.median(samples):>9.2f}"
            f"{_percentile(samples, 0.99):>9.2f}"
        )
    print(
        f"{'GetRun':<14}{len(baseline):>7}{statistics.median(baseline):>9.2f}"
        f"{_percentile(baseline, 0.99):>9.2f}   (the same runs, for comparison)"
    )
    p50, p99 = statistics.median(every), _percentile(every, 0.99)
    print(f"runs={counts[0]} explain_p50_ms={p50:.2f} explain_p99_ms={p99:.2f}")


if __name__ == "__main__":
    main()
