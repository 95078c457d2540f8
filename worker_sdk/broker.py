"""Consuming step tasks from a Redis stream with taskiq, robustly.

`StepTaskBroker` is taskiq-redis's stream broker whose `listen()` survives Redis going away and
coming back (even empty: the consumer group is declared again). `QueueConsumer` runs a taskiq
`Receiver` on it under supervision and drains it gracefully.

Delivery semantics (read from taskiq 0.13 / taskiq-redis 1.2.4):
- The consumer group is created at "0", so a group created after messages were added still
  gets them; an unacked message is re-claimed by another consumer once idle for
  `idle_timeout` (and the server's reconciler re-kicks attempts that never started).
- The Receiver acks a message after the task function returned (AcknowledgeType.WHEN_SAVED,
  also when it raised). The task returns only after the server answered the attempt's start
  or result, so a worker killed mid-step leaves its message unacked.
- Graceful drain: setting the finish event stops the prefetcher; the Receiver's runner then
  waits for the running tasks (`wait_tasks_timeout=None`: as long as they take) and returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from concurrent.futures import Executor
from typing import Any

import redis.exceptions
import structlog
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from taskiq import AckableMessage
from taskiq.receiver import Receiver
from taskiq_redis import RedisStreamBroker

__all__ = ["QueueConsumer", "StepTaskBroker"]

log = structlog.get_logger("squidmesh.worker.broker")

AUTOCLAIM_EVERY_S = 10.0
MAX_READ = 8
"""Messages read at once at most, when that many slots are free."""
MIN_BACKOFF = 0.1
MAX_BACKOFF = 2.0
_TRANSIENT = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)

RunAttempt = Callable[[str, str, str, str, str], Awaitable[None]]


class StepTaskBroker(RedisStreamBroker):
    """A stream broker for one task queue whose `listen()` never gives up."""

    def __init__(
        self,
        url: str,
        *,
        stream: str,
        consumer_group: str,
        consumer_name: str,
        free_slots: Callable[[], int] = lambda: 1,
    ) -> None:
        """`free_slots()`: how many attempts the worker could start now. Each read takes up
        to that many messages (at most MAX_READ, at least 1): fewer round trips under load,
        and no message held back from an idle worker while this one is busy."""
        self._free_slots = free_slots
        super().__init__(
            url,
            queue_name=stream,
            consumer_group_name=consumer_group,
            consumer_name=consumer_name,
            consumer_id="0",  # a group created after messages were added still gets them
            idle_timeout=60_000,
            xread_block=1000,  # below redis-py's 5 s socket timeout
            # A connection Redis closed (it restarted) fails its next command: one retry, on a
            # new connection, keeps an ack from failing for that alone.
            retry=Retry(NoBackoff(), 1),
        )

    async def _messages(self) -> AsyncGenerator[AckableMessage, None]:
        """New messages one at a time, and now and then the messages other consumers left
        unacked for longer than `idle_timeout` (a worker killed mid-step).

        taskiq-redis's own loop runs XAUTOCLAIM under a lock after every read: four more round
        trips per message. XAUTOCLAIM is atomic, and the server re-publishes attempts that are
        not claimed anyway, so once every AUTOCLAIM_EVERY_S is plenty."""
        async with Redis(connection_pool=self.connection_pool) as redis_conn:
            next_autoclaim = 0.0
            while True:
                if time.monotonic() >= next_autoclaim:
                    next_autoclaim = time.monotonic() + AUTOCLAIM_EVERY_S
                    # redis-py types stream replies loosely: (next id, [(id, fields)], ...).
                    reply: Any = await redis_conn.xautoclaim(
                        self.queue_name,
                        self.consumer_group_name,
                        self.consumer_name,
                        min_idle_time=self.idle_timeout,
                        count=self.unacknowledged_batch_size,
                    )
                    for msg_id, fields in reply[1]:
                        if fields:  # None: the entry was trimmed from the stream
                            yield self._message(msg_id, fields)
                fetched: Any = await redis_conn.xreadgroup(
                    self.consumer_group_name,
                    self.consumer_name,
                    {self.queue_name: ">"},
                    block=self.block,
                    count=max(1, min(MAX_READ, self._free_slots())),
                )
                for _stream, entries in fetched or ():
                    for msg_id, fields in entries:
                        yield self._message(msg_id, fields)

    def _message(self, msg_id: Any, fields: Any) -> AckableMessage:
        return AckableMessage(
            data=fields[b"data"], ack=self._ack_generator(id=msg_id, queue_name=self.queue_name)
        )

    def _ack_generator(self, id: str, queue_name: str) -> Callable[[], Awaitable[None]]:
        # taskiq-redis builds a Redis client for every ack: a tenth of a busy worker's CPU.
        async def ack() -> None:
            await self._acker.xack(queue_name, self.consumer_group_name, id)

        return ack

    @functools.cached_property
    def _acker(self) -> Redis:
        return Redis(connection_pool=self.connection_pool)

    async def listen(self) -> AsyncGenerator[AckableMessage, None]:
        backoff = MIN_BACKOFF
        while True:
            messages = self._messages()
            try:
                async for message in messages:
                    backoff = MIN_BACKOFF
                    yield message
            except redis.exceptions.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    log.warning("redis_error", stream=self.queue_name, error=str(exc))
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF)
                    continue
                log.warning(
                    "consumer_group_missing", stream=self.queue_name, group=self.consumer_group_name
                )
                try:
                    await self._declare_consumer_group()
                except _TRANSIENT as declare_error:
                    log.warning(
                        "redis_unavailable", stream=self.queue_name, error=str(declare_error)
                    )
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF)
            except _TRANSIENT as exc:
                log.warning(
                    "redis_unavailable", stream=self.queue_name, error=str(exc), retry_in=backoff
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
            finally:
                await messages.aclose()


class QueueConsumer:
    """Runs a taskiq Receiver on one queue's broker until `finish_event` is set, restarting it
    with a backoff if it fails; then waits for its running tasks and shuts the broker down."""

    def __init__(
        self,
        broker: StepTaskBroker,
        *,
        task_name: str,
        run_attempt: RunAttempt,
        executor: Executor,
        concurrency: int,
        finish_event: asyncio.Event,
    ) -> None:
        self.broker = broker
        self._executor = executor
        self._concurrency = concurrency
        self._finish_event = finish_event
        self._log = log.bind(stream=broker.queue_name)

        async def run_attempt_task(
            attempt_id: str, token: str, run_id: str, step: str, handler: str
        ) -> None:
            await run_attempt(attempt_id, token, run_id, step, handler)

        broker.is_worker_process = True
        broker.register_task(run_attempt_task, task_name=task_name)

    async def run(self) -> None:
        if not await self._startup():
            return
        backoff = MIN_BACKOFF
        try:
            while not self._finish_event.is_set():
                receiver = Receiver(
                    self.broker,
                    executor=self._executor,
                    validate_params=False,
                    max_async_tasks=self._concurrency,
                    max_prefetch=0,
                    run_startup=False,
                    wait_tasks_timeout=None,
                )
                try:
                    await receiver.listen(self._finish_event)
                    backoff = MIN_BACKOFF
                except Exception:
                    self._log.exception("receiver_failed", retry_in=backoff)
                    await self._sleep(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF)
        finally:
            try:
                await self.broker.shutdown()
            except Exception:
                self._log.warning("broker_shutdown_failed", exc_info=True)

    async def _startup(self) -> bool:
        """Starts the broker (declares the consumer group), retrying while Redis is down.
        False when asked to finish first."""
        backoff = MIN_BACKOFF
        while not self._finish_event.is_set():
            try:
                await self.broker.startup()
                self._log.info("consuming", group=self.broker.consumer_group_name)
                return True
            except _TRANSIENT as exc:
                self._log.warning("redis_unavailable", error=str(exc), retry_in=backoff)
                await self._sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
        return False

    async def _sleep(self, seconds: float) -> None:
        """Sleeps, waking early when finishing."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._finish_event.wait(), timeout=seconds)
