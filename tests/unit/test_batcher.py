"""The batcher: concurrent requests share a batch; results and errors reach their callers."""

from __future__ import annotations

import asyncio

import pytest

from server.engine.batcher import Batcher


async def test_requests_arriving_together_share_a_batch() -> None:
    batches: list[list[int]] = []

    async def run(items: list[int]) -> list[int]:
        batches.append(items)
        await asyncio.sleep(0.01)
        return [i * 10 for i in items]

    batcher: Batcher[int, int] = Batcher(run)
    assert await asyncio.gather(*(batcher.submit(i) for i in range(3))) == [0, 10, 20]
    assert batches == [[0, 1, 2]]
    # Requests that arrive while a batch is being written queue up and go in the next one.
    first = asyncio.ensure_future(batcher.submit(3))
    await asyncio.sleep(0.001)
    later = await asyncio.gather(*(batcher.submit(i) for i in range(4, 7)))
    assert await first == 30 and later == [40, 50, 60]
    assert batches[1:] == [[3], [4, 5, 6]]


async def test_a_failed_batch_fails_its_requests_only() -> None:
    async def run(items: list[int]) -> list[int]:
        await asyncio.sleep(0)
        if 2 in items:
            raise RuntimeError("boom")
        return items

    batcher: Batcher[int, int] = Batcher(run, max_batch=1)
    outcomes = await asyncio.gather(*(batcher.submit(i) for i in range(4)), return_exceptions=True)
    assert outcomes[:2] == [0, 1] and outcomes[3] == 3
    assert isinstance(outcomes[2], RuntimeError)
    with pytest.raises(RuntimeError):
        await batcher.submit(2)


async def test_a_bad_request_does_not_fail_the_others_of_its_batch() -> None:
    """A batch that fails is tried again one request at a time: only the request that fails
    alone gets the error (a batch is one statement, so nothing of it was written)."""
    batches: list[list[int]] = []

    async def run(items: list[int]) -> list[int]:
        batches.append(items)
        await asyncio.sleep(0.001)
        if 2 in items:
            raise ValueError("2 cannot be stored")
        return [i * 10 for i in items]

    batcher: Batcher[int, int] = Batcher(run)
    outcomes = await asyncio.gather(*(batcher.submit(i) for i in range(4)), return_exceptions=True)
    assert outcomes[:2] == [0, 10] and outcomes[3] == 30
    assert isinstance(outcomes[2], ValueError)
    assert batches[0] == [0, 1, 2, 3] and sorted(map(tuple, batches[1:])) == [
        (0,),
        (1,),
        (2,),
        (3,),
    ]
