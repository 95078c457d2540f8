"""The approval-heavy workload of `make bench` (f): N runs of a task, an approval and a task,
started at once; the benchmark approves each run as soon as it waits, one approval after the
other as fast as it can (it polls the open approvals every few milliseconds and sends the next
ApproveStep as soon as the previous one was answered), while the workers run the first and last
steps of the other runs.

Measured: runs/s (first StartRun to the last run's end), and, per run, the time from the
approval being received (its transaction's time, recorded with the command) to the next step's
attempt starting on a worker (its claim), both on Postgres' clock. Approvals are sent one at a
time so that this is the cost of the path (command, publish, delivery, claim), not the time an
approval waits behind the others in the server's queue: with 64 in flight, each waits for the
63 before it (measured: p50 59 ms)."""

from __future__ import annotations

import asyncio
import statistics
from dataclasses import dataclass

import psycopg
from grpc import aio
from squidmesh.v1 import run_service_pb2
from squidmesh.v1.run_service_pb2_grpc import RunServiceStub

from server.store.db import libpq_url
from worker_sdk import AsyncClient


@dataclass(frozen=True)
class ApprovalFigures:
    runs: int
    seconds: float
    approve_to_next_ms: list[float]

    @property
    def runs_per_s(self) -> float:
        return self.runs / self.seconds

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.approve_to_next_ms)

    @property
    def p99_ms(self) -> float:
        return statistics.quantiles(self.approve_to_next_ms, n=100)[98]

    def describe(self) -> str:
        return (
            f"{self.runs} runs (task, approval, task) in {self.seconds:.2f}s: "
            f"{self.runs_per_s:.0f} runs/s; approve -> next step started: "
            f"p50 {self.p50_ms:.1f} ms, p99 {self.p99_ms:.1f} ms"
        )


async def approval_workload(
    address: str, database_url: str, workflow: str, runs: int
) -> ApprovalFigures:
    async with AsyncClient(address) as client:
        run_ids = await asyncio.gather(*(client.start_run(workflow, {}) for _ in range(runs)))
    ids = [r.id for r in run_ids]
    approved: set[str] = set()
    async with (
        aio.insecure_channel(address) as channel,
        await psycopg.AsyncConnection.connect(libpq_url(database_url), autocommit=True) as conn,
    ):
        stub = RunServiceStub(channel)
        while len(approved) < runs:
            rows = await (
                await conn.execute(
                    "SELECT run_id::text FROM waits WHERE kind = 'approval' "
                    "AND resolved_at IS NULL AND run_id = ANY(%s::uuid[]) ORDER BY created_at",
                    (ids,),
                )
            ).fetchall()
            waiting = [run_id for (run_id,) in rows if run_id not in approved]
            for run_id in waiting:
                await stub.ApproveStep(
                    run_service_pb2.ApproveStepRequest(run_id=run_id, actor="bench")
                )
                approved.add(run_id)
            if not waiting:
                await asyncio.sleep(0.005)
        while True:
            row = await (
                await conn.execute(
                    "SELECT count(*) FILTER (WHERE status = 'completed'), "
                    "count(*) FILTER (WHERE status IN ('failed', 'cancelled')), "
                    "extract(epoch FROM max(ended_at) - min(created_at)) "
                    "FROM runs WHERE id = ANY(%s::uuid[])",
                    (ids,),
                )
            ).fetchone()
            assert row is not None
            done, bad, elapsed = row
            if bad:
                raise RuntimeError(f"{bad} approval runs did not complete")
            if done == runs:
                break
            await asyncio.sleep(0.05)
        rows = await (
            await conn.execute(
                "SELECT extract(epoch FROM a.started_at - c.created_at) * 1000 "
                "FROM run_commands c JOIN attempts a ON a.run_id = c.run_id "
                "  AND a.step_name = 'carry_out' AND a.number = 1 "
                "WHERE c.type = 'approve' AND c.outcome = 'applied' "
                "AND c.run_id = ANY(%s::uuid[])",
                (ids,),
            )
        ).fetchall()
    return ApprovalFigures(runs, float(elapsed), [float(r[0]) for r in rows])
