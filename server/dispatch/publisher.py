"""Publishes step tasks to taskiq (a Redis stream per task queue) after their transaction
committed. A failed publish is only logged: the attempt row is the durable intent and the
reconciler publishes it again.

Messages are taskiq's own (a `TaskiqMessage` through the broker's formatter, under the key
taskiq-redis's stream broker uses), consumed by taskiq receivers in the workers. They are
added with one pipelined round trip for all the dispatches published together, rather than one
`kick` each."""

from __future__ import annotations

import structlog
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from taskiq.message import TaskiqMessage
from taskiq_redis import RedisStreamBroker

from server.engine.batcher import Batcher
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
            # A connection Redis closed (it restarted) fails its next command: one retry, on a
            # new connection, keeps the first publish after a restart from being lost.
            retry=Retry(NoBackoff(), 1),
        )
        self._batcher: Batcher[list[Dispatch], None] = Batcher(self._publish_batch)

    async def close(self) -> None:
        await self._broker.shutdown()

    async def publish(self, dispatches: list[Dispatch]) -> None:
        await self._batcher.submit(dispatches)

    async def _publish_batch(self, batches: list[list[Dispatch]]) -> list[None]:
        dispatches = [d for batch in batches for d in batch]
        try:
            async with Redis(connection_pool=self._broker.connection_pool) as redis:
                pipe = redis.pipeline(transaction=False)
                for d in dispatches:
                    pipe.xadd(
                        self.stream_prefix + d.queue,
                        {b"data": self._message(d)},
                        maxlen=STREAM_MAXLEN,
                        approximate=True,
                    )
                await pipe.execute()
        except Exception as exc:
            log.warning(
                "publish_failed",
                count=len(dispatches),
                error=str(exc),
                note="the reconciler publishes them again after the dispatch timeout",
            )
        return [None] * len(batches)

    def _message(self, d: Dispatch) -> bytes:
        message = TaskiqMessage(
            task_id=self._broker.id_generator(),
            task_name=TASK_NAME,
            labels={},
            labels_types={},
            args=[],
            kwargs={
                "attempt_id": str(d.attempt_id),
                "token": d.token,
                "run_id": str(d.run_id),
                "step": d.step,
                "handler": d.handler,
            },
        )
        return self._broker.formatter.dumps(message).message
