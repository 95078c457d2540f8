"""Publishes step tasks to taskiq (a Redis stream per task queue) after their transaction
committed. A failed publish is only logged: the attempt row is the durable intent and the
reconciler publishes it again."""

from __future__ import annotations

import asyncio

import structlog
from taskiq.kicker import AsyncKicker
from taskiq_redis import RedisStreamBroker

from server.engine.views import Dispatch

log = structlog.get_logger("squidmesh.dispatch")

TASK_NAME = "squidmesh.run_attempt"
CONSUMER_GROUP = "squidmesh"
STREAM_MAXLEN = 100_000
"""Acked entries stay in a stream until trimmed; the bound keeps Redis memory flat."""


class Publisher:
    """Kicks step tasks. No consumer group is declared here: workers create theirs from the
    stream's start ("0"), so nothing published before a worker first connects is lost."""

    def __init__(self, redis_url: str, stream_prefix: str) -> None:
        self.stream_prefix = stream_prefix
        self._broker = RedisStreamBroker(
            redis_url,
            queue_name=f"{stream_prefix}default",
            consumer_group_name=CONSUMER_GROUP,
            maxlen=STREAM_MAXLEN,
            socket_timeout=5,
            socket_connect_timeout=2,
        )

    async def close(self) -> None:
        await self._broker.shutdown()

    async def publish(self, dispatches: list[Dispatch]) -> None:
        results = await asyncio.gather(*(self._kick(d) for d in dispatches), return_exceptions=True)
        failed = [d for d, r in zip(dispatches, results, strict=True) if isinstance(r, Exception)]
        if failed:
            log.warning(
                "publish_failed",
                count=len(failed),
                error=str(next(r for r in results if isinstance(r, Exception))),
                note="the reconciler publishes them again after the dispatch timeout",
            )

    async def _kick(self, d: Dispatch) -> None:
        kicker: AsyncKicker[..., None] = AsyncKicker(
            task_name=TASK_NAME,
            broker=self._broker,
            labels={"queue_name": self.stream_prefix + d.queue},
        )
        await kicker.kiq(
            attempt_id=str(d.attempt_id),
            token=d.token,
            run_id=str(d.run_id),
            step=d.step,
            handler=d.handler,
        )
