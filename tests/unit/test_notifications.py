"""The timer loop sleeps through notifications of timers due after it would wake anyway."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from server.events.hub import EventHub
from server.timers.loop import TimerLoop


def loop_and_hub() -> tuple[TimerLoop, EventHub]:
    hub = EventHub("")  # never started: notifications are fed to it by hand
    engine: Any = None  # _sleep_until does not touch the engine
    loop = TimerLoop(
        engine, hub, dispatch_timeout_ms=30_000, reconcile_interval_ms=1000, lease_grace_ms=0
    )
    return loop, hub


async def slept(loop: TimerLoop, wake_in: float, notify: list[tuple[float, str]]) -> float:
    """Seconds `_sleep_until(now + wake_in)` took while `notify` (delay, payload) arrived."""
    hub = loop._hub
    for delay, payload in notify:
        asyncio.get_running_loop().call_later(delay, hub._timer_set, payload)
    start = time.time()
    await loop._sleep_until(start + wake_in)
    return time.time() - start


async def test_a_timer_due_later_than_the_planned_wake_does_not_wake_the_loop() -> None:
    loop, _ = loop_and_hub()
    later = f"{(time.time() + 5) * 1000:.0f}"
    took = await slept(loop, 0.3, [(0.05, later), (0.1, later)])
    assert 0.29 <= took < 0.5


async def test_a_timer_due_sooner_wakes_the_loop_at_once() -> None:
    loop, _ = loop_and_hub()
    sooner = f"{(time.time() + 0.1) * 1000:.0f}"
    took = await slept(loop, 2.0, [(0.05, sooner)])
    assert 0.04 <= took < 0.3


async def test_a_notification_without_a_due_time_wakes_the_loop() -> None:
    """Payloads it cannot read (an older server's empty one) count as due now."""
    loop, _ = loop_and_hub()
    took = await slept(loop, 2.0, [(0.05, "")])
    assert took < 0.3
