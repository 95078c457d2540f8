"""The worker's stream broker against a real Redis: how many messages one read takes."""

from __future__ import annotations

import uuid

from redis.asyncio import Redis

from server.embedded import EmbeddedUrls
from worker_sdk.broker import MAX_READ, StepTaskBroker


async def pending_after_first_message(redis_url: str, free_slots: int) -> int:
    """Messages delivered to the consumer (its pending list) once the first one is taken,
    with 20 waiting in the stream."""
    stream = f"test:broker:{uuid.uuid4().hex[:8]}"
    broker = StepTaskBroker(
        redis_url,
        stream=stream,
        consumer_group="g",
        consumer_name="w",
        free_slots=lambda: free_slots,
    )
    await broker.startup()
    redis = Redis.from_url(redis_url)
    try:
        for i in range(20):
            await redis.xadd(stream, {b"data": str(i).encode()})
        messages = broker.listen()
        first = await anext(messages)
        assert first.data == b"0"
        pending = await redis.xpending(stream, "g")
        await messages.aclose()
        return int(pending["pending"])
    finally:
        await redis.delete(stream)
        await redis.aclose()
        await broker.shutdown()


async def test_a_read_takes_as_many_messages_as_there_are_free_slots(
    services: EmbeddedUrls,
) -> None:
    assert await pending_after_first_message(services.redis_url, free_slots=3) == 3
    assert await pending_after_first_message(services.redis_url, free_slots=100) == MAX_READ
    # A worker with no free slot still reads one (the receiver asked for it).
    assert await pending_after_first_message(services.redis_url, free_slots=0) == 1
