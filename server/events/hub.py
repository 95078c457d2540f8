"""One LISTEN connection per server process, fanned out to every watcher of a run.

A notification only says "runs X, Y, ... have new events"; watchers read the events themselves
from Postgres after their cursor, so a lost or coalesced notification can delay but never drop
an event. After a reconnect every watcher is woken to catch up."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import Callable, Iterator

import psycopg
import structlog

from server.store.changes import EVENTS_CHANNEL, STOPS_CHANNEL, TIMERS_CHANNEL

StopAttempts = Callable[[str, list[str], str], None]
"""(worker id, attempt ids, reason)"""

log = structlog.get_logger("squidmesh.events")


class EventHub:
    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo
        self._watchers: dict[str, set[asyncio.Event]] = {}
        self.timers = asyncio.Event()
        """Set when any replica set a timer or a deadline (wakes the timer loop)."""
        self._timer_due_ms = math.inf
        self.on_stop: StopAttempts | None = None
        """Called when any replica asks a worker to stop attempts (the worker service pushes
        it to the worker's stream, if this replica holds it)."""
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="event-hub")
        await asyncio.wait_for(self._ready.wait(), timeout=30)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @contextlib.contextmanager
    def subscribe(self, run_id: str) -> Iterator[asyncio.Event]:
        """An event set whenever the run has new events. Subscribe before reading, so nothing
        committed in between is missed."""
        wake = asyncio.Event()
        self._watchers.setdefault(run_id, set()).add(wake)
        try:
            yield wake
        finally:
            watchers = self._watchers.get(run_id)
            if watchers is not None:
                watchers.discard(wake)
                if not watchers:
                    del self._watchers[run_id]

    async def _listen(self) -> None:
        delay = 0.1
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True
                ) as conn:
                    await conn.execute(f"LISTEN {EVENTS_CHANNEL}")
                    await conn.execute(f"LISTEN {TIMERS_CHANNEL}")
                    await conn.execute(f"LISTEN {STOPS_CHANNEL}")
                    self._ready.set()
                    self._wake_all()  # catch up on anything missed while disconnected
                    delay = 0.1
                    async for note in conn.notifies():
                        if note.channel == TIMERS_CHANNEL:
                            self._timer_set(note.payload)
                        elif note.channel == STOPS_CHANNEL:
                            self._stop(note.payload)
                        else:
                            self._runs_changed(note.payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("listen_connection_lost", error=str(exc), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _runs_changed(self, payload: str) -> None:
        """Wakes the watchers of the runs in a notification's payload."""
        if not self._watchers:
            return
        for run_id in payload.split(","):
            for wake in self._watchers.get(run_id, ()):
                wake.set()

    def take_timer_due_ms(self) -> float:
        """The earliest due time (epoch ms) of the timers notified since the last call."""
        due, self._timer_due_ms = self._timer_due_ms, math.inf
        return due

    def _timer_set(self, payload: str) -> None:
        try:
            due = float(payload)
        except ValueError:  # not from this version: due now, to be safe
            due = 0.0
        self._timer_due_ms = min(self._timer_due_ms, due)
        self.timers.set()

    def _stop(self, payload: str) -> None:
        if self.on_stop is None:
            return
        stop = json.loads(payload)
        self.on_stop(stop["worker"], stop["attempts"], stop["reason"])

    def _wake_all(self) -> None:
        self._timer_due_ms = 0.0
        self.timers.set()
        for watchers in self._watchers.values():
            for wake in watchers:
                wake.set()
