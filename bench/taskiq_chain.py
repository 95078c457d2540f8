"""The baseline: the same 3-step workload as a raw taskiq chain on the same Redis (each task
kicks the next; no durability, no fencing, no state). `python -m bench.taskiq_chain URL STREAM`
runs one consumer process."""

from __future__ import annotations

import asyncio
import sys

from redis.asyncio import Redis
from taskiq.api import run_receiver_task
from taskiq_redis import RedisStreamBroker

COUNTER = "bench:chain:done"


def make_broker(url: str, stream: str) -> RedisStreamBroker:
    return RedisStreamBroker(
        url, queue_name=stream, consumer_group_name="bench", consumer_id="0", xread_block=1000
    )


def register(broker: RedisStreamBroker, url: str) -> None:
    redis = Redis.from_url(url)

    @broker.task(task_name="chain.step1")
    async def step1(chain: int) -> None:
        await step2.kiq(chain)

    @broker.task(task_name="chain.step2")
    async def step2(chain: int) -> None:
        await step3.kiq(chain)

    @broker.task(task_name="chain.step3")
    async def step3(chain: int) -> None:
        await redis.incr(COUNTER)


async def consume(url: str, stream: str) -> None:
    broker = make_broker(url, stream)
    register(broker, url)
    broker.is_worker_process = True
    await broker.startup()
    await run_receiver_task(broker, max_async_tasks=100)


if __name__ == "__main__":
    asyncio.run(consume(sys.argv[1], sys.argv[2]))
