"""Every server replica notices, once, that Redis lost its data (`server.dispatch.loss`); a
worker's broker declares its consumer group again and reads what is published after."""

from __future__ import annotations

from pathlib import Path

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from taskiq.utils import maybe_awaitable

from server.dispatch.loss import RedisLossWatch
from tests.support import RedisProcess, stream_prefix
from worker_sdk.broker import StepTaskBroker


async def _nothing() -> int:
    return 0


async def test_every_replica_notices_once_that_redis_restarted_empty(tmp_path: Path) -> None:
    redis = RedisProcess(tmp_path / "redis")
    prefix = stream_prefix()
    first = RedisLossWatch(redis.url, prefix, _nothing, 1.0)
    second = RedisLossWatch(redis.url, prefix, _nothing, 1.0)
    try:
        assert await first.lost()  # it found no marker: a new Redis, or one wiped meanwhile
        assert not await second.lost()  # another replica finds the marker there
        assert not await first.lost()
        assert not await second.lost()

        redis.restart_empty()  # their connections are closed: each reconnects at once
        assert await first.lost()  # it had to create the marker again
        assert await second.lost()  # the marker changed
        assert not await first.lost()
        assert not await second.lost()

        other = RedisLossWatch(redis.url, stream_prefix(), _nothing, 1.0)
        try:  # a deployment with another prefix has a marker of its own
            assert await other.lost()
            assert not await first.lost()
        finally:
            await other.close()
    finally:
        await first.close()
        await second.close()
        redis.stop()


async def test_a_consumer_declares_its_group_again_after_redis_restarted_empty(
    tmp_path: Path,
) -> None:
    redis = RedisProcess(tmp_path / "redis")
    stream = f"{stream_prefix()}q"
    broker = StepTaskBroker(redis.url, stream=stream, consumer_group="g", consumer_name="w")
    client = Redis.from_url(redis.url, retry=Retry(NoBackoff(), 1))  # reconnects
    await broker.startup()
    messages = broker.listen()
    try:
        await client.xadd(stream, {b"data": b"before"})
        before = await anext(messages)
        assert before.data == b"before"

        redis.restart_empty()  # the stream and its group are gone
        await maybe_awaitable(
            before.ack()
        )  # nothing left to ack, and no error for the connection Redis closed
        await client.xadd(stream, {b"data": b"after"})  # published again, before any group
        after = await anext(messages)
        assert after.data == b"after"
        await maybe_awaitable(after.ack())
        pending = await client.xpending(stream, "g")
        assert pending["pending"] == 0
    finally:
        await messages.aclose()
        await client.aclose()
        await broker.shutdown()
        redis.stop()
