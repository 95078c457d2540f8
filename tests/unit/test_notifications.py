"""Notifications: the timer loop sleeps through those of timers due after it would wake
anyway; those of changed runs carry many runs each."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from server.events.hub import EventHub
from server.events.notifier import run_payloads
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


# The upper bounds sit halfway to what the wrong behaviour would take (the later due time,
# the planned wake), so that a busy machine, which only makes the loop wake later, fails none.


async def test_a_timer_due_later_than_the_planned_wake_does_not_wake_the_loop() -> None:
    loop, _ = loop_and_hub()
    later = f"{(time.time() + 5) * 1000:.0f}"
    took = await slept(loop, 0.3, [(0.05, later), (0.1, later)])
    assert 0.29 <= took < 2.5  # woken by a notification: 0.05 s; slept until it: 5 s


async def test_a_timer_due_sooner_wakes_the_loop_at_once() -> None:
    loop, _ = loop_and_hub()
    sooner = f"{(time.time() + 0.1) * 1000:.0f}"
    took = await slept(loop, 2.0, [(0.05, sooner)])
    assert 0.04 <= took < 1.0  # not woken: 2 s


async def test_a_notification_without_a_due_time_wakes_the_loop() -> None:
    """Payloads it cannot read (an older server's empty one) count as due now."""
    loop, _ = loop_and_hub()
    took = await slept(loop, 2.0, [(0.05, "")])
    assert took < 1.0  # not woken: 2 s


def test_run_notifications_carry_many_runs_and_wake_each_watcher() -> None:
    runs = [str(uuid.uuid4()) for _ in range(450)]
    payloads = run_payloads(runs)
    assert len(payloads) == 3
    assert all(len(p.encode()) < 8000 for p in payloads)  # Postgres' limit on a payload
    assert [r for p in payloads for r in p.split(",")] == runs

    hub = EventHub("")
    with (
        hub.subscribe(runs[0]) as first,
        hub.subscribe(runs[449]) as last,
        hub.subscribe(str(uuid.uuid4())) as other,
    ):
        for payload in payloads:
            hub._runs_changed(payload)
        assert first.is_set() and last.is_set() and not other.is_set()
