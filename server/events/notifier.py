"""Sends the wake-up NOTIFYs after commit, batched, from a connection of its own.

Postgres serialises every committing transaction that issued NOTIFY behind one lock held
through its commit (and so through the WAL flush): with NOTIFY inside the command
transactions, commits could not overlap and throughput stopped at one fsync per commit.
Notifications are only hints (watchers and timer loops read the durable rows themselves, and
also poll), so they are sent here after commit, coalesced, with synchronous_commit off."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time

import psycopg
import structlog

from server.store.changes import EVENTS_CHANNEL, STOPS_CHANNEL, TIMERS_CHANNEL
from server.store.db import dumps

log = structlog.get_logger("squidmesh.events")

_STOPS_PER_NOTIFY = 100
"""Attempt ids per notification (a NOTIFY payload is limited to 8000 bytes)."""
_RUNS_PER_NOTIFY = 200
"""Run ids per notification (36 characters and a comma each). One notification per run was
6% of the server's CPU under load, and as much again in every listening replica."""


def run_payloads(run_ids: list[str]) -> list[str]:
    """The payloads of the EVENTS_CHANNEL notifications for these runs."""
    return [
        ",".join(run_ids[i : i + _RUNS_PER_NOTIFY])
        for i in range(0, len(run_ids), _RUNS_PER_NOTIFY)
    ]


class Notifier:
    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo
        self._runs: set[str] = set()
        self._timers_due_ms = math.inf
        """The earliest due time (epoch ms) of the timers set since the last NOTIFY."""
        self._stops: list[str] = []
        self._pending = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="notifier")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def run_changed(self, run_id: str) -> None:
        self._runs.add(run_id)
        self._pending.set()

    def timers_changed(self, due_in_ms: float) -> None:
        self._timers_due_ms = min(self._timers_due_ms, time.time() * 1000 + due_in_ms)
        self._pending.set()

    def stop_attempts(self, worker_attempts: list[tuple[str, str]], reason: str) -> None:
        by_worker: dict[str, list[str]] = {}
        for worker, attempt in worker_attempts:
            by_worker.setdefault(worker, []).append(attempt)
        for worker, attempts in by_worker.items():
            for i in range(0, len(attempts), _STOPS_PER_NOTIFY):
                chunk = attempts[i : i + _STOPS_PER_NOTIFY]
                self._stops.append(dumps({"worker": worker, "attempts": chunk, "reason": reason}))
        self._pending.set()

    async def _run(self) -> None:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True
                ) as conn:
                    await conn.execute("SET synchronous_commit TO off")
                    while True:
                        await self._pending.wait()
                        self._pending.clear()
                        runs, self._runs = self._runs, set()
                        timers_due, self._timers_due_ms = self._timers_due_ms, math.inf
                        stops, self._stops = self._stops, []
                        payloads = run_payloads(list(runs))
                        channels = [EVENTS_CHANNEL] * len(payloads) + [STOPS_CHANNEL] * len(stops)
                        payloads += stops
                        if timers_due < math.inf:
                            channels.append(TIMERS_CHANNEL)
                            payloads.append(f"{timers_due:.0f}")
                        await conn.execute(
                            "SELECT pg_notify(c, p) FROM unnest(%s::text[], %s::text[]) AS x(c, p)",
                            (channels, payloads),
                        )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("notify_connection_lost", error=str(exc))
                await asyncio.sleep(0.5)
