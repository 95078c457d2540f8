"""The timer and reconciler loop, run by every server replica (rows are claimed with
FOR UPDATE SKIP LOCKED, so replicas never fire the same timer twice):

- due timers: attempts whose backoff ended are published at their due time, wait steps
  that are due complete, schedules' due ticks start their runs (`schedule_commands`), and
  gates (approvals, event and child waits) past their deadline act
  on it, woken early by NOTIFY when any replica sets one due before the loop
  would wake anyway (a retry under load: every failure notifies);
- deadlines: running attempts past their attempt timeout fail as timed_out, on time (the
  loop also wakes at the earliest deadline);
- lost dispatches: attempts published but not claimed within the dispatch timeout (Redis lost
  them, or a server died between commit and publish) are published again, and waits whose
  event was published, or whose child run ended, while nothing looked are resolved;
- leases: running attempts whose worker stopped heartbeating fail as worker_lost. A process
  that just started waits one lease period first: after an outage every lease looks expired,
  and the workers need a moment to reconnect and heartbeat."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time

import structlog

from server.engine.commands import Engine
from server.engine.errors import Unavailable
from server.engine.usage import Usage
from server.events.hub import EventHub
from worker_sdk.clock import next_sleep

log = structlog.get_logger("squidmesh.timers")


class TimerLoop:
    def __init__(
        self,
        engine: Engine,
        hub: EventHub,
        *,
        dispatch_timeout_ms: int,
        reconcile_interval_ms: int,
        lease_grace_ms: int,
    ) -> None:
        self._engine = engine
        self._hub = hub
        self._dispatch_timeout_ms = dispatch_timeout_ms
        self._interval_s = reconcile_interval_ms / 1000
        self._lease_grace_s = lease_grace_ms / 1000
        self._task: asyncio.Task[None] | None = None
        self.usage = Usage()
        """The loop's work so far, its sleeps excluded."""
        self.schedules_usage = Usage()
        """Of which firing schedules' due ticks (their runs' own work included)."""
        self._ticks = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="timer-loop")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        next_scan = time.monotonic()
        next_leases = time.monotonic() + self._lease_grace_s
        # When a running attempt's deadline may have passed: from the last look at the next
        # timers, so that a wake-up for a retry does not also scan for timeouts.
        deadline_at = time.monotonic()
        while True:
            try:
                with self.usage:
                    self._hub.timers.clear()
                    self._hub.take_timer_due_ms()  # what is due now, the queries below find
                    await self._engine.kick_due()
                    fired = await self._engine.expire_waits()
                    if fired:
                        log.info("gate_deadlines_fired", count=fired)
                    with self.schedules_usage:
                        fired_ticks = await self._engine.fire_due_schedules()
                    now = time.monotonic()
                    if now >= deadline_at:
                        timed_out = await self._engine.expire_deadlines()
                        if timed_out:
                            log.info("attempts_timed_out", count=timed_out)
                    if now >= next_scan:  # the scans for what went missing, once per interval
                        republished = await self._engine.kick_lost(self._dispatch_timeout_ms)
                        if republished:
                            log.info("lost_dispatches_republished", count=republished)
                        looked_up = await self._engine.sweep_waits()
                        if looked_up:
                            log.info("waits_resolved_by_sweep", runs=looked_up)
                        next_scan = now + self._interval_s
                    if now >= next_leases:
                        expired = await self._engine.expire_leases()
                        if expired:
                            log.info("leases_expired", count=expired)
                        next_leases = now + self._interval_s
                    following = await self._engine.next_timers()
                    deadline_at = (
                        math.inf
                        if following.deadline_ms is None
                        else time.monotonic() + following.deadline_ms / 1000
                    )
            except asyncio.CancelledError:
                raise
            except Unavailable as exc:  # expected while Postgres restarts: no traceback
                log.warning("timer_loop_database_unavailable", error=exc.message)
                await asyncio.sleep(self._interval_s)
                continue
            except Exception:
                log.exception("timer_loop_failed")
                await asyncio.sleep(self._interval_s)
                continue
            if fired_ticks:
                self._report_usage(fired_ticks)
            wait_s = self._interval_s
            for next_ms in (following.due_ms, following.deadline_ms):
                if next_ms is not None:
                    wait_s = min(max(next_ms / 1000, 0.0), wait_s)
            await self._sleep_until(time.time() + wait_s)

    def _report_usage(self, fired_ticks: int) -> None:
        """The running totals, for bench/schedules.py (see `server.engine.usage`)."""
        self._ticks += fired_ticks
        runs = self._engine.tick_runs_usage
        log.debug(
            "timer_loop_usage",
            ticks=self._ticks,
            cpu_s=round(self.usage.cpu_s, 6),
            wall_s=round(self.usage.wall_s, 6),
            schedules_cpu_s=round(self.schedules_usage.cpu_s, 6),
            schedules_wall_s=round(self.schedules_usage.wall_s, 6),
            tick_runs_cpu_s=round(runs.cpu_s, 6),
        )

    async def _sleep_until(self, wake_at: float) -> None:
        """Until `wake_at` (epoch seconds), or until a timer is notified that is due before."""
        while (remaining := wake_at - time.time()) > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._hub.timers.wait(), timeout=next_sleep(remaining))
            if not self._hub.timers.is_set():
                continue  # the clock, short of `wake_at` on purpose (`next_sleep`)
            self._hub.timers.clear()
            if self._hub.take_timer_due_ms() / 1000 < wake_at:
                return
