"""Diagnosis: workers as rows (their attempt streams opening and closing, ListWorkers) and
ExplainRun. Reads only Postgres, so any replica answers."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from server.engine.core import EngineCore
from server.engine.errors import run_not_found
from server.engine.explain import explain
from server.engine.explanation import ExplainLimits, Explanation
from server.engine.views import WorkerView
from server.store import diagnosis, workers

_FOREVER = timedelta(days=36_500)
"""Longer ago than any worker row."""
LIVE_HEARTBEATS = 5
"""A worker not heard from for this many heartbeat intervals is no longer live (workers
heartbeat every interval, idle or not)."""


class DiagnosisCommands(EngineCore):
    @property
    def _live_ms(self) -> int:
        return LIVE_HEARTBEATS * self._config.heartbeat_interval_ms

    async def worker_connected(self, worker_id: str) -> datetime | None:
        """Records that the worker's attempt stream opened; returns the time recorded, to give
        back to `worker_disconnected` (None: the worker never registered)."""
        async with self._db.connect() as conn:
            return await workers.connected(conn, worker_id)

    async def worker_disconnected(self, worker_id: str, connected_at: datetime) -> None:
        """Records that the stream opened at `connected_at` closed (unless another opened)."""
        async with self._db.connect() as conn:
            await workers.disconnected(conn, worker_id, connected_at)

    async def list_workers(self, queue: str, gone_within: timedelta) -> list[WorkerView]:
        """Live workers, and those gone within `gone_within`; live first, then by id."""
        # Capped: now() minus a Duration's 10,000 years is out of Postgres's range.
        gone_ms = int(min(gone_within, _FOREVER).total_seconds() * 1000)
        async with self._db.connect() as conn:
            return await workers.list_workers(conn, queue, gone_ms, self._live_ms)

    async def explain_run(self, run_id: uuid.UUID) -> Explanation:
        async with self._db.connect() as conn:
            facts = await diagnosis.run_facts(conn, run_id, self._live_ms)
            if facts is None:
                raise run_not_found(run_id)
            defn = await self._definition(conn, facts.workflow_id)
        # Declined attempts are published again after a backoff that doubles up to the
        # dispatch timeout: a decline within two of those still explains the wait.
        window = timedelta(milliseconds=2 * self._config.dispatch_timeout_ms)
        return explain(facts, defn, ExplainLimits(decline_window=window))
