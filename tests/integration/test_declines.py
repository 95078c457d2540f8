"""A worker gives back a step task it cannot run (AttemptDeclined), against a real server,
Postgres and Redis: the attempt is published again after a backoff that doubles with each
delivery, instead of after the dispatch timeout; an attempt claimed meanwhile is left alone."""

from __future__ import annotations

from datetime import datetime, timedelta

import psycopg
from grpc import aio
from squidmesh.v1 import run_pb2
from squidmesh.v1 import worker_service_pb2 as wpb
from squidmesh.v1.worker_service_pb2_grpc import WorkerServiceStub

from server.app import App
from server.embedded import EmbeddedUrls
from server.store.db import libpq_url
from tests.integration.test_api import run_events, start_orders
from tests.integration.test_handoff import (
    ORDERS_HANDLERS,
    attempt_row,
    published,
    wait_until,
    worker_protocol,
)
from worker_sdk import struct_to_dict


async def timer(database_url: str, attempt_id: str) -> tuple[datetime, datetime | None, datetime]:
    """The attempt's due time, when it was last published (None: not since it became a timer
    again), and now, on the database's clock."""
    async with await psycopg.AsyncConnection.connect(libpq_url(database_url)) as conn:
        cursor = await conn.execute(
            "SELECT due_at, kicked_at, now() FROM attempts WHERE id = %s", (attempt_id,)
        )
        row = await cursor.fetchone()
    assert row is not None
    return row[0], row[1], row[2]


def declined(attempt_id: str, token: str) -> wpb.AttemptDeclined:
    return wpb.AttemptDeclined(
        attempt_id=attempt_id, token=token, worker_id="w-old", reason="handler_unknown"
    )


async def test_a_declined_attempt_is_published_again_after_a_doubling_backoff(
    app: App, channel: aio.Channel, database_url: str, services: EmbeddedUrls
) -> None:
    registration = await WorkerServiceStub(channel).RegisterWorker(
        wpb.RegisterWorkerRequest(worker_id="w-probe", queues=["orders"])
    )
    assert registration.accepts_declines
    protocol = await worker_protocol(channel, "w-old", ["orders.ship"])
    run, attempt_id, token = await start_orders(channel, database_url)
    assert await published(services.redis_url, app) == 1

    moments: list[tuple[datetime, datetime]] = []  # around each decline, database clock
    for delivery, backoff_ms in ((2, 100), (3, 200)):
        backoff = timedelta(milliseconds=backoff_ms)
        *_, before = await timer(database_url, attempt_id)
        answer = await protocol.send(declined=declined(attempt_id, token))
        *_, after = await timer(database_url, attempt_id)
        moments.append((before, after))
        assert (answer.start.accepted, answer.start.refusal_reason) == (False, "declined")
        # A timer again, due `backoff` after the decline (recorded between `before` and
        # `after`), then published by the timer when due: checked on the database's clock,
        # so a busy machine, however long it takes to look, fails none of it.
        await wait_until(lambda: published(services.redis_url, app), delivery)
        due, kicked, _ = await timer(database_url, attempt_id)
        assert before + backoff <= due <= after + backoff
        assert kicked is not None and kicked >= due

    # The run says why it waits: the declines are in its log, at most one a second.
    notes = [
        e
        for e in await run_events(channel, run.id)
        if e.type == run_pb2.RUN_EVENT_TYPE_ATTEMPT_DECLINED
    ]
    first = struct_to_dict(notes[0].data)
    assert first == {
        "worker_id": "w-old",
        "handler": "orders.reserve",
        "queue": "orders",
        "retry_in_ms": 100,
    }
    assert (notes[0].step, notes[0].attempt_number) == ("reserve", 1)
    # The two declines were recorded at most this far apart (database clock).
    apart = (moments[1][1] - moments[0][0]).total_seconds()
    if apart < 1:
        assert len(notes) == 1, f"two declines {apart:.2f}s apart were both recorded"
    else:
        assert len(notes) <= 2

    # A worker that has the handler claims it; a late decline changes nothing.
    other = await worker_protocol(channel, "w-new", ORDERS_HANDLERS)
    claimed = await other.send(
        started=wpb.AttemptStarted(attempt_id=attempt_id, token=token, worker_id="w-new")
    )
    assert claimed.start.accepted
    late = await protocol.send(declined=declined(attempt_id, token))
    assert not late.start.accepted
    row = await attempt_row(database_url, run.id, "reserve")
    assert (row["status"], row["worker_id"], row["kicked"]) == ("running", "w-new", True)
    protocol.call.cancel()
    other.call.cancel()
