"""Noticing that Redis lost its data, so that the step tasks it held are published again at
once rather than after the dispatch timeout.

Postgres knows every task published and not claimed yet (attempts scheduled and kicked); it
cannot see whether their messages are still in Redis. A marker key tells: each replica looks at
it once per reconcile interval, with SET NX then GET in one transaction. If this replica had to
create it, or its value changed since the last look (another replica created it), Redis lost
its keys (restarted empty, flushed, replaced by an empty one) and every unclaimed task attempt
is published again. A message published twice is harmless: fencing lets one claim through. A
Redis restarted with its data (AOF) keeps the marker and triggers nothing; a server that starts
and finds no marker (a new Redis, or one wiped while no server ran) publishes again whatever
was pending.

Not seen: a Redis that kept the marker but lost recent writes (a failover to a lagging
replica). Those tasks wait for the dispatch timeout, as before."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable

import redis.exceptions
import structlog
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

log = structlog.get_logger("squidmesh.dispatch")

_UNREACHABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


def marker_key(stream_prefix: str) -> str:
    """The stream prefix itself: the stream of a queue with an empty name, which no queue has."""
    return stream_prefix


class RedisLossWatch:
    """Calls `republish` (which returns how many tasks it published) whenever Redis is found
    to have lost its keys, until it succeeds once per loss."""

    def __init__(
        self,
        redis_url: str,
        stream_prefix: str,
        republish: Callable[[], Awaitable[int]],
        interval_s: float,
    ) -> None:
        # One retry: a connection Redis closed when it restarted fails its next command.
        self._redis = Redis.from_url(
            redis_url, socket_timeout=2, socket_connect_timeout=2, retry=Retry(NoBackoff(), 1)
        )
        self._key = marker_key(stream_prefix)
        self._republish = republish
        self._interval_s = interval_s
        self._epoch: bytes | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="redis-loss-watch")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._redis.aclose()

    async def lost(self) -> bool:
        """Whether Redis lost its keys since the last look; at the first look, whether the
        marker was missing."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(self._key, uuid.uuid4().hex, nx=True)
            pipe.get(self._key)
            created, epoch = await pipe.execute()
        lost = bool(created) or (self._epoch is not None and epoch != self._epoch)
        self._epoch = epoch
        return lost

    async def _run(self) -> None:
        pending = False  # a loss seen whose tasks are not published again yet
        reachable = True
        while True:
            try:
                first_look = self._epoch is None
                if await self.lost():
                    pending = True
                    if first_look:  # a new Redis, or one wiped while this server was down
                        log.info("redis_marker_created")
                    else:
                        log.warning("redis_data_lost")
                if pending:
                    republished = await self._republish()
                    pending = False
                    log.info("unclaimed_tasks_republished", count=republished)
                if not reachable:
                    log.info("redis_reachable")
                reachable = True
            except asyncio.CancelledError:
                raise
            except _UNREACHABLE as exc:
                if reachable:  # once per outage, not once a second
                    log.warning("redis_unreachable", error=str(exc))
                reachable = False
            except Exception:  # Postgres down while republishing: tried again next time
                log.exception("redis_loss_watch_failed", republish_pending=pending)
            await asyncio.sleep(self._interval_s)
