"""Sleeping to the millisecond (worker_sdk.clock): short on purpose, then topped up, and
never short in the end."""

from __future__ import annotations

import time

from worker_sdk.clock import next_sleep, sleep_exactly


def test_a_long_wait_is_cut_short_and_a_short_one_slept_whole() -> None:
    assert next_sleep(1.0) == 0.9
    assert next_sleep(0.1) < 0.1
    assert next_sleep(0.001) == 0.001


async def test_sleep_exactly_never_returns_early() -> None:
    for seconds in (0.0, 0.003, 0.05):
        began = time.monotonic()
        await sleep_exactly(seconds)
        assert time.monotonic() - began >= seconds
