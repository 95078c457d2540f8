"""Runs concurrent requests in batches: while one batch is being written, new requests queue
up and go together in the next. Under load a batch costs one statement instead of one per
request; alone, a request waits for nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Batcher(Generic[K, V]):
    def __init__(self, run: Callable[[list[K]], Awaitable[list[V]]], max_batch: int = 256):
        self._run = run
        self._max_batch = max_batch
        self._queue: list[tuple[K, asyncio.Future[V]]] = []
        self._draining = False
        self._task: asyncio.Task[None] | None = None

    async def submit(self, item: K) -> V:
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if not self._draining:
            self._draining = True
            self._task = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
                try:
                    results = await self._run([item for item, _ in batch])
                except Exception as exc:
                    if len(batch) == 1:
                        _settle(batch[0][1], exception=exc)
                    else:  # one bad request must not fail the others: each alone again
                        await asyncio.gather(*(self._alone(item, future) for item, future in batch))
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    _settle(future, result)
        finally:
            self._draining = False

    async def _alone(self, item: K, future: asyncio.Future[V]) -> None:
        try:
            (result,) = await self._run([item])
        except Exception as exc:
            _settle(future, exception=exc)
        else:
            _settle(future, result)


def _settle(
    future: asyncio.Future[V], result: V | None = None, exception: BaseException | None = None
) -> None:
    if future.done():  # its caller gave up (cancelled)
        return
    if exception is not None:
        future.set_exception(exception)
    else:
        future.set_result(result)  # type: ignore[arg-type]
