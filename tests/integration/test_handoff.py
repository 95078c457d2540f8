"""Handoff against a real server, Postgres and Redis: the answer to a result hands the
reporting worker the run's next attempt, claimed in the same transaction and never published;
a failure's answer hands back its first retry, unclaimed; a resent result (its answer lost)
hands the same attempt over again; and nothing is handed over that the worker did not ask
for or cannot run."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import psycopg
from google.protobuf import duration_pb2, struct_pb2
from grpc import aio
from redis.asyncio import Redis
from squidmesh.v1 import run_pb2, run_service_pb2
from squidmesh.v1 import worker_service_pb2 as wpb
from squidmesh.v1.worker_service_pb2_grpc import WorkerServiceStub

from server.app import App
from server.embedded import EmbeddedUrls
from server.store.db import libpq_url
from tests.integration.servers import running_app
from tests.integration.test_api import (
    Protocol,
    register_orders,
    start_and_claim,
)

ORDERS_HANDLERS = ["orders.reserve", "orders.ship"]


async def worker_protocol(channel: aio.Channel, worker_id: str, handlers: list[str]) -> Protocol:
    """A registered worker's attempt stream (opened with its id, as the SDK does)."""
    await WorkerServiceStub(channel).RegisterWorker(
        wpb.RegisterWorkerRequest(
            worker_id=worker_id, queues=["orders"], handlers=handlers, concurrency=1
        )
    )
    return Protocol(channel, worker_id=worker_id)


def completed(attempt_id: str, token: str, accept: bool = True) -> wpb.AttemptCompleted:
    return wpb.AttemptCompleted(
        attempt_id=attempt_id,
        token=token,
        output=struct_pb2.Value(string_value="held"),
        accept_handoff=accept,
    )


async def attempt_row(database_url: str, run_id: str, step: str) -> dict[str, Any]:
    async with await psycopg.AsyncConnection.connect(libpq_url(database_url)) as conn:
        cursor = await conn.execute(
            "SELECT id::text, status, worker_id, handoff_from::text, started_at IS NOT NULL, "
            "lease_expires_at IS NOT NULL, kicked_at IS NOT NULL FROM attempts "
            "WHERE run_id = %s AND step_name = %s ORDER BY number DESC LIMIT 1",
            (run_id, step),
        )
        row = await cursor.fetchone()
    assert row is not None
    keys = ("id", "status", "worker_id", "handoff_from", "started", "leased", "kicked")
    return dict(zip(keys, row, strict=True))


async def dispatch_times(database_url: str, attempt_id: str) -> tuple[datetime, datetime]:
    """(due_at, kicked_at) of a published attempt: when it was due, when last dispatched."""
    async with await psycopg.AsyncConnection.connect(libpq_url(database_url)) as conn:
        cursor = await conn.execute(
            "SELECT due_at, kicked_at FROM attempts WHERE id = %s AND kicked_at IS NOT NULL",
            (attempt_id,),
        )
        row = await cursor.fetchone()
    assert row is not None, "not dispatched"
    return row[0], row[1]


async def published(redis_url: str, app: App) -> int:
    """Step tasks published to the orders queue's stream so far."""
    async with Redis.from_url(redis_url) as redis:
        return int(await redis.xlen(app.settings.stream_prefix + "orders"))


async def test_a_result_hands_the_next_attempt_to_its_worker(
    app: App, channel: aio.Channel, database_url: str, services: EmbeddedUrls
) -> None:
    protocol = await worker_protocol(channel, "w1", ORDERS_HANDLERS)
    run, reserve_id, reserve_token = await start_and_claim(channel, database_url, protocol, "w1")

    answer = await protocol.send(completed=completed(reserve_id, reserve_token))
    assert answer.result.accepted and answer.result.HasField("handoff")
    handoff = answer.result.handoff
    assert handoff.start.accepted and handoff.start.run_id == run.id
    assert (handoff.start.step, handoff.start.handler) == ("ship", "orders.ship")
    assert handoff.start.attempt_number == 1
    assert handoff.start.idempotency_key == f"{run.id}:ship"
    assert handoff.start.input.struct_value.fields["reserve"].string_value == "held"
    ship = await attempt_row(database_url, run.id, "ship")
    assert ship == {
        "id": handoff.attempt_id,
        "status": "running",
        "worker_id": "w1",
        "handoff_from": reserve_id,
        "started": True,
        "leased": True,
        "kicked": True,
    }
    assert await published(services.redis_url, app) == 1  # reserve's task only

    # The answer was lost: the worker resends the result and is handed the same attempt.
    resent = await protocol.send(completed=completed(reserve_id, reserve_token))
    assert resent.result.accepted
    assert (resent.result.handoff.attempt_id, resent.result.handoff.token) == (
        handoff.attempt_id,
        handoff.token,
    )
    assert resent.result.handoff.start.step == "ship"

    # A claim of the handed-off attempt (a duplicate delivery) is refused; its result counts.
    duplicate = await Protocol(channel, "w2").send(
        started=wpb.AttemptStarted(
            attempt_id=handoff.attempt_id, token=handoff.token, worker_id="w2"
        )
    )
    assert (duplicate.start.accepted, duplicate.start.refusal_reason) == (False, "duplicate")
    beat = await protocol.send(
        heartbeat=wpb.WorkerHeartbeat(
            worker_id="w1",
            attempts=[wpb.AttemptProgress(attempt_id=handoff.attempt_id, token=handoff.token)],
        )
    )
    assert list(beat.heartbeat.lost_attempt_ids) == []
    last = await protocol.send(completed=completed(handoff.attempt_id, handoff.token))
    assert last.result.accepted and not last.result.HasField("handoff")
    protocol.call.cancel()

    runs = await register_orders(channel)
    final = (await runs.GetRun(run_service_pb2.GetRunRequest(run_id=run.id))).run
    assert final.status == run_pb2.RUN_STATUS_COMPLETED
    assert [len(step.attempts) for step in final.steps] == [1, 1]
    assert final.steps[1].attempts[0].worker_id == "w1"
    watch = runs.WatchRun(run_service_pb2.WatchRunRequest(run_id=run.id, after_sequence=0))
    ship_events = [m.event.type async for m in watch if m.event.step == "ship"]
    assert ship_events[:2] == [
        run_pb2.RUN_EVENT_TYPE_ATTEMPT_SCHEDULED,
        run_pb2.RUN_EVENT_TYPE_ATTEMPT_STARTED,
    ]


async def test_nothing_is_handed_over_unasked_or_unrunnable(
    app: App, channel: aio.Channel, database_url: str, services: EmbeddedUrls
) -> None:
    # Not asked for: the next attempt is published as usual.
    protocol = await worker_protocol(channel, "w1", ORDERS_HANDLERS)
    run, attempt_id, token = await start_and_claim(channel, database_url, protocol, "w1")
    answer = await protocol.send(completed=completed(attempt_id, token, accept=False))
    assert answer.result.accepted and not answer.result.HasField("handoff")
    assert (await attempt_row(database_url, run.id, "ship"))["status"] == "scheduled"

    # A worker without the next step's handler.
    narrow = await worker_protocol(channel, "w2", ["orders.reserve"])
    run, attempt_id, token = await start_and_claim(channel, database_url, narrow, "w2")
    answer = await narrow.send(completed=completed(attempt_id, token))
    assert not answer.result.HasField("handoff")
    ship = await attempt_row(database_url, run.id, "ship")
    assert (ship["status"], ship["worker_id"], ship["kicked"]) == ("scheduled", None, True)

    # A retry, to a worker that does not accept retries (an older SDK), goes through the
    # broker, even one due at once.
    run, attempt_id, token = await start_and_claim(channel, database_url, protocol, "w1")
    failed = await protocol.send(
        failed=wpb.AttemptFailed(
            attempt_id=attempt_id,
            token=token,
            error_type="Flaky",
            message="try again",
            retry_after=duration_pb2.Duration(),
            accept_handoff=True,
        )
    )
    assert failed.result.accepted and not failed.result.HasField("handoff")
    retry = await attempt_row(database_url, run.id, "reserve")
    assert (retry["status"], retry["worker_id"]) == ("scheduled", None)
    # Three first steps, the ship steps of the first two runs, and the retry.
    assert await published(services.redis_url, app) == 6
    protocol.call.cancel()
    narrow.call.cancel()


async def test_a_server_with_handoff_off_hands_nothing_over(
    services: EmbeddedUrls, database_url: str
) -> None:
    async with (
        running_app(services, database_url, handoff=False) as app,
        aio.insecure_channel(f"127.0.0.1:{app.port}") as channel,
    ):
        protocol = await worker_protocol(channel, "w1", ORDERS_HANDLERS)
        run, attempt_id, token = await start_and_claim(channel, database_url, protocol, "w1")
        answer = await protocol.send(completed=completed(attempt_id, token))
        assert answer.result.accepted and not answer.result.HasField("handoff")
        assert (await attempt_row(database_url, run.id, "ship"))["status"] == "scheduled"
        protocol.call.cancel()


def failed(
    attempt_id: str, token: str, retry_after_ms: int, accept_retry: bool = True
) -> wpb.AttemptFailed:
    after = duration_pb2.Duration()
    after.FromMilliseconds(retry_after_ms)
    return wpb.AttemptFailed(
        attempt_id=attempt_id,
        token=token,
        error_type="Flaky",
        message="try again",
        retry_after=after,
        accept_handoff=True,
        accept_retry=accept_retry,
    )


async def test_a_failure_hands_back_its_first_retry_to_claim_when_due(
    app: App, channel: aio.Channel, database_url: str, services: EmbeddedUrls
) -> None:
    protocol = await worker_protocol(channel, "w1", ORDERS_HANDLERS)
    run, first_id, first_token = await start_and_claim(channel, database_url, protocol, "w1")

    answer = await protocol.send(failed=failed(first_id, first_token, retry_after_ms=40))
    assert answer.result.accepted and not answer.result.HasField("handoff")
    retry = answer.result.retry
    assert retry.delay.ToMilliseconds() == 40
    # Scheduled (a timer row, due in 40 ms) but dispatched to w1: neither claimed nor published.
    row = await attempt_row(database_url, run.id, "reserve")
    assert row == {
        "id": retry.attempt_id,
        "status": "scheduled",
        "worker_id": None,
        "handoff_from": first_id,
        "started": False,
        "leased": False,
        "kicked": True,
    }
    # The answer was lost: the resent failure hands back the same retry, with what is left.
    resent = await protocol.send(failed=failed(first_id, first_token, retry_after_ms=40))
    assert (resent.result.retry.attempt_id, resent.result.retry.token) == (
        retry.attempt_id,
        retry.token,
    )
    assert 0 <= resent.result.retry.delay.ToMilliseconds() <= 40

    # Claimed like a delivered task. Its own failure's retry (the third attempt) is not
    # handed back: the timer publishes it, for any worker.
    claimed = await protocol.send(
        started=wpb.AttemptStarted(attempt_id=retry.attempt_id, token=retry.token, worker_id="w1")
    )
    assert claimed.start.accepted and claimed.start.attempt_number == 2
    again = await protocol.send(failed=failed(retry.attempt_id, retry.token, retry_after_ms=40))
    assert again.result.accepted and not again.result.HasField("retry")
    await wait_until(lambda: published(services.redis_url, app), 2)
    third = await attempt_row(database_url, run.id, "reserve")
    assert (third["status"], third["handoff_from"], third["kicked"]) == ("scheduled", None, True)
    due, kicked = await dispatch_times(database_url, third["id"])
    assert kicked >= due  # published by its timer when due, not with the answer
    protocol.call.cancel()

    async with await psycopg.AsyncConnection.connect(libpq_url(database_url)) as conn:
        cursor = await conn.execute(
            "SELECT attempt_number, data FROM run_events WHERE run_id = %s "
            "AND type = 'attempt_scheduled' AND attempt_number > 1 ORDER BY seq",
            (run.id,),
        )
        scheduled = await cursor.fetchall()
    assert [(n, data.get("held_by")) for n, data in scheduled] == [(2, "w1"), (3, None)]


async def test_a_retry_handed_back_and_never_claimed_is_published_after_the_dispatch_timeout(
    services: EmbeddedUrls, database_url: str
) -> None:
    async with (
        running_app(
            services, database_url, dispatch_timeout_ms=300, reconcile_interval_ms=100
        ) as app,
        aio.insecure_channel(f"127.0.0.1:{app.port}") as channel,
    ):
        protocol = await worker_protocol(channel, "w1", ORDERS_HANDLERS)
        run, attempt_id, token = await start_and_claim(channel, database_url, protocol, "w1")
        answer = await protocol.send(failed=failed(attempt_id, token, retry_after_ms=10))
        assert answer.result.HasField("retry")
        retry_id = answer.result.retry.attempt_id
        _, handed_back = await dispatch_times(database_url, retry_id)
        protocol.call.cancel()  # the worker died holding it
        await wait_until(lambda: published(services.redis_url, app), 2)
        row = await attempt_row(database_url, run.id, "reserve")
        assert (row["id"], row["status"]) == (retry_id, "scheduled")
        # Published not by a timer at its due time (10 ms) but by the reconciler, once the
        # dispatch timeout passed since it was handed back (on the database's clock: a busy
        # machine only makes it later).
        due, published_at = await dispatch_times(database_url, retry_id)
        assert published_at - handed_back >= timedelta(milliseconds=300), (due, published_at)


async def test_a_retry_handed_back_of_a_run_cancelled_meanwhile_is_refused(
    app: App, channel: aio.Channel, database_url: str
) -> None:
    protocol = await worker_protocol(channel, "w1", ORDERS_HANDLERS)
    run, attempt_id, token = await start_and_claim(channel, database_url, protocol, "w1")
    retry = (await protocol.send(failed=failed(attempt_id, token, retry_after_ms=50))).result.retry
    runs = await register_orders(channel)
    await runs.CancelRun(run_service_pb2.CancelRunRequest(run_id=run.id))
    claim = await protocol.send(
        started=wpb.AttemptStarted(attempt_id=retry.attempt_id, token=retry.token, worker_id="w1")
    )
    assert (claim.start.accepted, claim.start.refusal_reason) == (False, "cancelled")
    final = (await runs.GetRun(run_service_pb2.GetRunRequest(run_id=run.id))).run
    assert final.status == run_pb2.RUN_STATUS_CANCELLED
    assert [a.status for a in final.steps[0].attempts][-1] == run_pb2.ATTEMPT_STATUS_CANCELLED
    protocol.call.cancel()


async def wait_until(count: Callable[[], Awaitable[int]], expected: int) -> None:
    """Polls `count` until it reaches `expected` (5 s at most)."""
    for _ in range(100):
        if await count() >= expected:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"still {await count()}, expected {expected}")
