"""Crashes lose no run: a worker killed mid-step, Redis restarted empty, the server killed and
restarted, and a step task delivered twice."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from squidmesh.v1 import run_pb2

from server.dispatch.publisher import Publisher
from server.engine.views import Dispatch
from tests.e2e.conftest import Cluster
from tests.e2e.marks import read_marks
from tests.support import RedisProcess, wait_for


def test_worker_killed_mid_step_is_replaced_after_its_lease(
    cluster: Cluster, tmp_path: Path
) -> None:
    cluster.start_server()
    victim = cluster.start_worker(concurrency=1)
    with cluster.client() as client:
        cluster.wait_registered(client, "e2e_slow")
        run = client.start_run("e2e_slow", {"seconds": 5, "marks": str(tmp_path)})
        wait_for(lambda: read_marks(tmp_path, "first", run.id), 30, "first attempt to start")
        victim.kill()
        cluster.start_worker(concurrency=1)
        # The rest of the run is quick: only the lost attempt took 5 s.
        final = client.wait_for_run(run.id, timeout=60)

    assert final.status == run_pb2.RUN_STATUS_COMPLETED, final
    first = final.steps[0]
    assert [a.status for a in first.attempts] == [
        run_pb2.ATTEMPT_STATUS_FAILED,
        run_pb2.ATTEMPT_STATUS_SUCCEEDED,
    ]
    assert first.attempts[0].error.reason == "worker_lost"
    assert first.attempts[0].worker_id != first.attempts[1].worker_id


RESUME_S = 5.0
"""How soon after Redis is back (restarted empty) its lost step tasks must be running again:
the server notices the loss within a reconcile interval (1 s) and the worker reconnects within
its read backoff (at most 2 s), far sooner than the dispatch timeout (30 s) would."""


def test_redis_restarted_empty_mid_run(cluster: Cluster, tmp_path: Path) -> None:
    redis = RedisProcess(tmp_path / "redis")
    try:
        cluster.env["SQUIDMESH_REDIS_URL"] = redis.url
        cluster.start_server()  # the default dispatch timeout: recovery must not wait for it
        cluster.start_worker(concurrency=2)  # stays up: it must declare its group again
        with cluster.client() as client:
            cluster.wait_registered(client, "e2e_slow")
            # Six runs on two slots: three or four step tasks wait in Redis when it is wiped.
            payload = {"seconds": 0.3, "marks": str(tmp_path)}
            runs = [client.start_run("e2e_slow", payload).id for _ in range(6)]
            redis.restart_empty()
            back = asyncio.run(_database_now(cluster))
            finals = [client.wait_for_run(r, timeout=60) for r in runs]
    finally:
        redis.stop()
    for final in finals:
        assert final.status == run_pb2.RUN_STATUS_COMPLETED, final
        for step in final.steps:  # each result applied once, each handler run once
            assert [a.status for a in step.attempts] == [run_pb2.ATTEMPT_STATUS_SUCCEEDED]
            assert len(read_marks(tmp_path, step.name, final.id)) == 1
    lost = asyncio.run(
        _rows(
            cluster,
            "SELECT extract(epoch FROM started_at - %s) FROM attempts WHERE kick_count > 0",
            (back,),
        )
    )
    assert lost, "nothing was published again: Redis lost no task?"
    resumed_after = max(float(row[0]) for row in lost)
    assert resumed_after <= RESUME_S, f"a lost task ran {resumed_after:.1f} s after Redis was back"


def test_server_killed_and_restarted_mid_run(cluster: Cluster, tmp_path: Path) -> None:
    server = cluster.start_server(SQUIDMESH_DISPATCH_TIMEOUT_MS="3000")
    cluster.start_worker(concurrency=8)
    with cluster.client() as client:
        cluster.wait_registered(client, "e2e_slow")
        runs = [
            client.start_run("e2e_slow", {"seconds": 1, "marks": str(tmp_path)}).id
            for _ in range(8)
        ]
        wait_for(lambda: all(read_marks(tmp_path, "first", r) for r in runs), 30, "steps running")
    server.kill()
    cluster.start_server(SQUIDMESH_DISPATCH_TIMEOUT_MS="3000")
    with cluster.client() as client:
        finals = [client.wait_for_run(r, timeout=90) for r in runs]
        histories = [list(client.watch_run(r, after_sequence=0)) for r in runs]

    for final, history in zip(finals, histories, strict=True):
        assert final.status == run_pb2.RUN_STATUS_COMPLETED, final
        completed = [
            m.event.step for m in history if m.event.type == run_pb2.RUN_EVENT_TYPE_STEP_COMPLETED
        ]
        # Each step's result applied exactly once.
        assert sorted(completed) == ["first", "second"]
        for step in final.steps:
            succeeded = [a for a in step.attempts if a.status == run_pb2.ATTEMPT_STATUS_SUCCEEDED]
            assert len(succeeded) == 1


def test_duplicate_delivery_runs_the_handler_once(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_server()
    cluster.start_worker(concurrency=4)
    cluster.start_worker(concurrency=4)
    with cluster.client() as client:
        cluster.wait_registered(client, "e2e_slow")
        run = client.start_run("e2e_slow", {"seconds": 1, "marks": str(tmp_path)})
        wait_for(lambda: read_marks(tmp_path, "first", run.id), 30, "first attempt to start")
        attempt = client.get_run(run.id).steps[0].attempts[0]
        # Publish the same step task twice more, as a redelivery would.
        asyncio.run(_publish_again(cluster, run.id, attempt.id))
        final = client.wait_for_run(run.id, timeout=30)

    assert final.status == run_pb2.RUN_STATUS_COMPLETED
    assert len(read_marks(tmp_path, "first", run.id)) == 1
    assert len(final.steps[0].attempts) == 1


async def _publish_again(cluster: Cluster, run_id: str, attempt_id: str) -> None:
    import psycopg

    from server.store.db import libpq_url

    async with await psycopg.AsyncConnection.connect(
        libpq_url(cluster.env["SQUIDMESH_DATABASE_URL"])
    ) as conn:
        row = await (
            await conn.execute("SELECT token FROM attempts WHERE id = %s", (attempt_id,))
        ).fetchone()
    assert row is not None
    publisher = Publisher(
        cluster.env["SQUIDMESH_REDIS_URL"], cluster.env["SQUIDMESH_STREAM_PREFIX"]
    )
    dispatch = Dispatch(
        uuid.UUID(attempt_id), row[0], uuid.UUID(run_id), "first", "e2e_slow.first", "default"
    )
    await publisher.publish([dispatch, dispatch])
    await publisher.close()


def test_worker_drains_in_flight_attempts_on_sigterm(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_server()
    worker = cluster.start_worker(concurrency=2)
    with cluster.client() as client:
        cluster.wait_registered(client, "e2e_slow")
        run = client.start_run("e2e_slow", {"seconds": 2, "marks": str(tmp_path)})
        wait_for(lambda: read_marks(tmp_path, "first", run.id), 30, "first attempt to start")
        assert worker.terminate(timeout=30) == 0  # returns once the handler finished
        first = client.get_run(run.id).steps[0]
        assert first.status == run_pb2.STEP_STATUS_COMPLETED
        assert [a.status for a in first.attempts] == [run_pb2.ATTEMPT_STATUS_SUCCEEDED]
        cluster.start_worker()
        final = client.wait_for_run(run.id, timeout=30)
    assert final.status == run_pb2.RUN_STATUS_COMPLETED
    assert len(read_marks(tmp_path, "first", run.id)) == 1


def test_a_worker_stops_within_its_drain_timeout_whatever_its_handlers_do(
    cluster: Cluster, tmp_path: Path
) -> None:
    """SIGTERM with a handler that runs far longer than the drain timeout: the worker exits
    once the drain timeout passed, and the attempt it leaves fails as worker_lost when its
    lease ends (then the retry policy decides)."""
    cluster.start_server()
    drain_s = 1.0
    handler_s = 300
    worker = cluster.start_worker(concurrency=2, args=["--drain-timeout", str(drain_s)])
    with cluster.client() as client:
        cluster.wait_registered(client, "e2e_slow")
        run = client.start_run("e2e_slow", {"seconds": handler_s, "marks": str(tmp_path)})
        wait_for(lambda: read_marks(tmp_path, "first", run.id), 30, "first attempt to start")
        began = time.monotonic()
        assert worker.terminate(timeout=handler_s / 2) == 0
        took = time.monotonic() - began
        print(f"measured: the worker exited {took:.1f}s after SIGTERM (drain timeout {drain_s}s)")

        def lost() -> bool:
            attempts = client.get_run(run.id).steps[0].attempts
            return attempts[0].error.reason == "worker_lost"

        wait_for(lost, 60, "the abandoned attempt's lease to end")
        client.cancel_run(run.id, reason="done")
    assert took < handler_s / 2, "the worker waited for its handler"


async def _rows(
    cluster: Cluster, query: str, params: tuple[object, ...] = ()
) -> list[tuple[Any, ...]]:
    import psycopg

    from server.store.db import libpq_url

    async with await psycopg.AsyncConnection.connect(
        libpq_url(cluster.env["SQUIDMESH_DATABASE_URL"])
    ) as conn:
        return await (await conn.execute(query, params)).fetchall()


async def _database_now(cluster: Cluster) -> datetime:
    """Postgres's clock, which the attempts' times are on."""
    rows = await _rows(cluster, "SELECT clock_timestamp()")
    return cast(datetime, rows[0][0])
