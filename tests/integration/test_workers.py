"""Workers are rows (ListWorkers), against a real server, Postgres and Redis: a worker is live
while its attempt stream is open and it heartbeats (idle or not), shows the attempts it runs as
used slots, and is listed as gone, for a while, once its stream closes or it falls silent."""

from __future__ import annotations

import asyncio

import pytest
from google.protobuf import duration_pb2
from grpc import StatusCode, aio
from squidmesh.v1 import worker_service_pb2 as wpb
from squidmesh.v1.worker_service_pb2_grpc import WorkerServiceStub

from server.app import App
from server.embedded import EmbeddedUrls
from server.store import workers
from server.store.db import Database
from tests.integration.servers import running_app
from tests.integration.test_api import Protocol, details, start_and_claim
from tests.support import wait_for_async

ORDERS_HANDLERS = ["orders.reserve", "orders.ship"]
EVENTUALLY_S = 30.0
"""How long a worker may take to be seen gone: on a slow machine a closing stream may be
noticed late."""


async def connect_worker(
    channel: aio.Channel,
    worker_id: str,
    handlers: list[str],
    *,
    queues: tuple[str, ...] = ("orders",),
    concurrency: int = 1,
) -> Protocol:
    """A worker registered as the SDK registers one, with its attempt stream open and one
    (empty) heartbeat answered on it: from then on the servers see it live."""
    await WorkerServiceStub(channel).RegisterWorker(
        wpb.RegisterWorkerRequest(
            worker_id=worker_id,
            queues=queues,
            handlers=handlers,
            concurrency=concurrency,
            labels={"host": f"host-of-{worker_id}", "pid": "4242"},
        )
    )
    protocol = Protocol(channel, worker_id)
    await protocol.send(heartbeat=wpb.WorkerHeartbeat(worker_id=worker_id))
    return protocol


async def list_workers(
    channel: aio.Channel, queue: str = "", gone_within_s: float | None = None
) -> list[wpb.WorkerInfo]:
    request = wpb.ListWorkersRequest(queue=queue)
    if gone_within_s is not None:
        request.gone_within.FromNanoseconds(int(gone_within_s * 1e9))
    return list((await WorkerServiceStub(channel).ListWorkers(request)).workers)


def by_id(workers: list[wpb.WorkerInfo]) -> dict[str, wpb.WorkerInfo]:
    return {w.worker_id: w for w in workers}


async def test_live_busy_and_gone_workers_are_listed_live_first(
    channel: aio.Channel, database_url: str
) -> None:
    busy = await connect_worker(channel, "w-busy", ORDERS_HANDLERS, concurrency=2)
    mail = await connect_worker(channel, "w-a-mail", ["emails.send"], queues=("emails",))

    listed = await list_workers(channel)
    assert [w.worker_id for w in listed] == ["w-a-mail", "w-busy"]  # both live: by id
    worker = by_id(listed)["w-busy"]
    assert worker.live and worker.host == "host-of-w-busy"
    assert (list(worker.queues), list(worker.handlers)) == (["orders"], ORDERS_HANDLERS)
    assert (worker.slots_used, worker.slots_total) == (0, 2)
    assert worker.labels["pid"] == "4242"
    assert worker.HasField("connect_time") and not worker.HasField("disconnect_time")
    assert worker.last_heartbeat_time.ToDatetime() >= worker.connect_time.ToDatetime()

    # A claimed attempt takes one of its slots.
    await start_and_claim(channel, database_url, busy, "w-busy")
    assert by_id(await list_workers(channel))["w-busy"].slots_used == 1
    assert [w.worker_id for w in await list_workers(channel, queue="emails")] == ["w-a-mail"]
    assert await list_workers(channel, queue="nothing") == []

    # The mail worker's stream closes: it is gone, listed after the live one.
    mail.call.cancel()

    async def mail_gone() -> bool:
        return not by_id(await list_workers(channel))["w-a-mail"].live

    await wait_for_async(mail_gone, EVENTUALLY_S, "the closed worker to be gone")
    listed = await list_workers(channel)
    assert [(w.worker_id, w.live) for w in listed] == [("w-busy", True), ("w-a-mail", False)]
    gone = listed[1]
    assert gone.disconnect_time.ToDatetime() >= gone.connect_time.ToDatetime()
    # Only the live one when gone ones are not asked for.
    assert [w.worker_id for w in await list_workers(channel, gone_within_s=0)] == ["w-busy"]
    busy.call.cancel()


async def test_gone_within_must_not_be_negative(channel: aio.Channel) -> None:
    request = wpb.ListWorkersRequest(gone_within=duration_pb2.Duration(seconds=-1))
    with pytest.raises(aio.AioRpcError) as raised:
        await WorkerServiceStub(channel).ListWorkers(request)
    assert raised.value.code() == StatusCode.INVALID_ARGUMENT
    assert details(raised.value)[1] == [("gone_within", "must be >= 0")]
    # The largest Duration is accepted (everything gone within it).
    huge = wpb.ListWorkersRequest(gone_within=duration_pb2.Duration(seconds=315_576_000_000))
    assert list((await WorkerServiceStub(channel).ListWorkers(huge)).workers) == []


async def test_an_idle_worker_that_heartbeats_stays_live_and_a_silent_one_is_gone(
    services: EmbeddedUrls, database_url: str
) -> None:
    # Heartbeats every 200 ms: a worker silent for 5 of them (1 s) is no longer live.
    async with (
        running_app(services, database_url, heartbeat_interval_ms=200) as app,
        aio.insecure_channel(f"127.0.0.1:{app.port}") as channel,
    ):
        protocol = await connect_worker(channel, "w-idle", ORDERS_HANDLERS)
        first = by_id(await list_workers(channel))["w-idle"]
        assert first.live
        # An empty heartbeat (no attempts: the SDK sends one each interval while idle)
        # refreshes when the worker was last heard from.
        await asyncio.sleep(0.01)
        await protocol.send(heartbeat=wpb.WorkerHeartbeat(worker_id="w-idle"))
        second = by_id(await list_workers(channel))["w-idle"]
        assert second.live
        assert second.last_heartbeat_time.ToDatetime() > first.last_heartbeat_time.ToDatetime()

        # Its stream stays open but it says nothing more: gone, as of its last heartbeat.
        async def silent() -> bool:
            return not by_id(await list_workers(channel))["w-idle"].live

        await wait_for_async(silent, EVENTUALLY_S, "the silent worker to be gone")
        gone = by_id(await list_workers(channel))["w-idle"]
        assert gone.disconnect_time == second.last_heartbeat_time
        # It speaks again on the same stream: live again.
        await protocol.send(heartbeat=wpb.WorkerHeartbeat(worker_id="w-idle"))
        assert by_id(await list_workers(channel))["w-idle"].live
        protocol.call.cancel()


async def test_a_stream_that_closes_after_a_reconnect_leaves_the_worker_live(
    app: App, database_url: str
) -> None:
    """A worker may reconnect (to another replica) before the server of its old stream notices
    that stream closed: that late close must not make it look gone."""
    db = Database(database_url, pool_size=1)
    await db.open()
    try:
        async with db.connect() as conn:
            await workers.register(conn, "w-moving", ["orders"], ORDERS_HANDLERS, 1, {})
            old = await workers.connected(conn, "w-moving")
            new = await workers.connected(conn, "w-moving")
            assert old is not None and new is not None and new > old
            await workers.disconnected(conn, "w-moving", old)  # the old stream's close, late
            (moving,) = await workers.list_workers(conn, "", 0, live_ms=60_000)
            assert moving.live and moving.connected_at == new and moving.gone_at is None
            await workers.disconnected(conn, "w-moving", new)
            (moving,) = await workers.list_workers(conn, "", 3_600_000, live_ms=60_000)
            assert not moving.live and moving.gone_at is not None
            assert await workers.connected(conn, "never-registered") is None
    finally:
        await db.close()
