"""Sends the wake-up NOTIFYs after commit, batched, from a connection of its own.

Postgres serialises every committing transaction that issued NOTIFY behind one lock held
through its commit (and so through the WAL flush): with NOTIFY inside the command
transactions, commits could not overlap and throughput stopped at one fsync per commit.
Notifications are only hints (watchers and timer loops read the durable rows themselves, and
also poll), so they are sent here after commit, coalesced, with synchronous_commit off."""

from __future__ import annotations

import asyncio
import contextlib

import psycopg
import structlog

from server.store.changes import EVENTS_CHANNEL, TIMERS_CHANNEL

log = structlog.get_logger("squidmesh.events")


class Notifier:
    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo
        self._runs: set[str] = set()
        self._timers = False
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

    def timers_changed(self) -> None:
        self._timers = True
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
                        timers, self._timers = self._timers, False
                        channels = [EVENTS_CHANNEL] * len(runs)
                        payloads = list(runs)
                        if timers:
                            channels.append(TIMERS_CHANNEL)
                            payloads.append("")
                        await conn.execute(
                            "SELECT pg_notify(c, p) FROM unnest(%s::text[], %s::text[]) AS x(c, p)",
                            (channels, payloads),
                        )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("notify_connection_lost", error=str(exc))
                await asyncio.sleep(0.5)
