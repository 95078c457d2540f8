"""WatchRun: a snapshot, then the run's events in order from a cursor, until it is terminal."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from server.engine.commands import Engine
from server.engine.errors import run_not_found
from server.engine.views import EventView, RunView
from server.events.hub import EventHub
from server.store import events
from server.store.db import Database


@dataclass(frozen=True)
class KeepAlive:
    pass


WatchItem = RunView | EventView | KeepAlive

POLL_S = 1.0
READ_LIMIT = 500
"""Events read per query; a full batch means there may be more."""


async def watch(
    engine: Engine,
    db: Database,
    hub: EventHub,
    run_id: uuid.UUID,
    after_seq: int | None,
    keepalive_s: float,
) -> AsyncIterator[WatchItem]:
    last_sent = time.monotonic()
    with hub.subscribe(str(run_id)) as wake:
        if after_seq is None:
            snapshot = await engine.get_run(run_id)
            yield snapshot
            cursor = snapshot.last_seq
        else:
            cursor = after_seq
        while True:
            wake.clear()
            async with db.connect() as conn:
                batch = await events.read_after(conn, run_id, cursor, READ_LIMIT)
                position = None if batch else await events.run_position(conn, run_id)
            for item in batch:
                yield item
                cursor = item.seq
                last_sent = time.monotonic()
            if len(batch) == READ_LIMIT:
                continue  # read until caught up before deciding anything
            if batch:
                # Caught up: each event carries the run's status as of its commit, so the last
                # one tells whether the run ended, without another query.
                terminal = batch[-1].run_status.terminal
            elif position is None:
                raise run_not_found(run_id)
            else:
                status, last_seq = position
                terminal = status.terminal and cursor >= last_seq
            if terminal:
                return
            # Notifications are hints sent after commit; polling now and then covers a lost one.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(POLL_S, keepalive_s)):
                    await wake.wait()
            if not wake.is_set() and time.monotonic() - last_sent >= keepalive_s:
                yield KeepAlive()
                last_sent = time.monotonic()
