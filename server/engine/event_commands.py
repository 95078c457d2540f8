"""Events and child runs: PublishEvent resolves the wait_event steps waiting for it, and a run
that starts waiting for an event, or for a child run, looks back for what already happened
(the event published since its run started, the child that ended). Each event key is locked
while it is published and while a wait looks back for it, so whichever commits second sees
the other: no event is lost to a race. The timer loop sweeps for look-backs a crash skipped."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from server.engine.core import log
from server.engine.gate_commands import GateCommands
from server.engine.model import (
    JSON,
    TERMINAL_RUN_STATUSES,
    Failure,
    FailureReason,
    WorkflowDef,
)
from server.store import changes, commands, runs, waits
from server.store.changes import RunChange
from server.store.commands import CommandRecord
from server.store.db import Connection, retry_conflicts
from server.store.runs import LockedRun


@dataclass(frozen=True)
class Publication:
    """The result of PublishEvent."""

    event_id: str
    created: bool
    published_at: datetime
    resolved_run_ids: list[uuid.UUID]


_LOOKED_UP = ("event", "child")
"""Waits for something that may have happened before the run reached them."""


class EventCommands(GateCommands):
    # --- events ------------------------------------------------------------------------------

    @retry_conflicts
    async def publish_event(
        self,
        name: str,
        correlation_key: str,
        payload: dict[str, JSON],
        event_id: str,
        actor: str,
    ) -> Publication:
        """Stores the event and resolves every wait for it, in one transaction."""
        self._check_size("payload", payload)
        event_id = event_id or uuid.uuid4().hex
        resolved: list[tuple[uuid.UUID, RunChange]] = []
        async with self._db.transaction() as conn:
            await waits.lock_event_key(conn, name, correlation_key)
            event, created = await waits.publish(
                conn, name, correlation_key, event_id, payload, actor
            )
            if created:
                for run_id in await waits.waiting_for(conn, name, correlation_key):
                    change = await self._resolve_event(conn, run_id, name, correlation_key, event)
                    if change is not None:
                        resolved.append((run_id, change))
        for _, change in resolved:
            await self._after_commit(change)
        log.info(
            "event_published",
            event_name=name,
            correlation_key=correlation_key,
            event_id=event_id,
            created=created,
            resolved=len(resolved),
        )
        return Publication(event_id, created, event.published_at, [r for r, _ in resolved])

    async def _resolve_event(
        self,
        conn: Connection,
        run_id: uuid.UUID,
        name: str,
        key: str,
        event: waits.PublishedEvent,
    ) -> RunChange | None:
        """Resolves the run's (first) open wait for the event, under the run's lock (the
        event key's lock is held). None when it no longer waits."""
        run = await runs.lock(conn, run_id)
        if run is None or run.status in TERMINAL_RUN_STATUSES:
            return None
        # One event resolves one wait per run: its oldest for this name and key.
        wait = next(
            (
                w
                for w in await waits.open_waits(conn, run_id)
                if w.kind == "event" and w.event_name == name and w.correlation_key == key
            ),
            None,
        )
        if wait is None:
            return None
        defn = await self._definition(conn, run.workflow_id)
        change = await self._resolve_by_event(conn, run, defn, wait, event)
        await changes.apply(conn, change)
        return change

    async def _resolve_by_event(
        self,
        conn: Connection,
        run: LockedRun,
        defn: WorkflowDef,
        wait: waits.Wait,
        event: waits.PublishedEvent,
    ) -> RunChange:
        """The change that resolves an event wait with the event's payload, and the event
        recorded in the run's history (which is also what marks it consumed by the run)."""
        change = await self._resolve(conn, run, defn, wait.step_name, event.payload)
        await commands.record(
            conn,
            CommandRecord(
                run.id,
                "event",
                event.actor,
                idempotency_key=event.event_id,
                step=wait.step_name,
                data={
                    "event": wait.event_name or "",
                    "correlation_key": wait.correlation_key or "",
                    "payload": event.payload,
                },
            ),
        )
        return change

    async def _look_back(self, run_id: uuid.UUID) -> None:
        """The run has open waits for events or child runs: resolves each whose event was
        published since the run started, or whose child ended (what happened before the run
        reached its wait). Each event key is locked as PublishEvent locks it, so a publication
        that committed meanwhile is seen by one side or the other."""
        async with self._db.connect() as conn:
            pending = [w for w in await waits.open_waits(conn, run_id) if w.kind in _LOOKED_UP]
        for wait in pending:
            change = await self._look_back_at(wait)
            if change is not None:
                await self._after_commit(change)

    @retry_conflicts
    async def _look_back_at(self, wait: waits.Wait) -> RunChange | None:
        async with self._db.transaction() as conn:
            if wait.kind == "event":
                assert wait.event_name is not None and wait.correlation_key is not None
                await waits.lock_event_key(conn, wait.event_name, wait.correlation_key)
            run = await runs.lock(conn, wait.run_id)
            if run is None or run.status in TERMINAL_RUN_STATUSES:
                return None
            still_open = {w.step_name for w in await waits.open_waits(conn, run.id)}
            if wait.step_name not in still_open:
                return None
            defn = await self._definition(conn, run.workflow_id)
            if wait.kind == "event":
                since = await runs.created_at(conn, run.id)
                event = await waits.unconsumed_event(conn, wait, since)
                if event is None:
                    return None
                change = await self._resolve_by_event(conn, run, defn, wait, event)
            else:
                child = await runs.child(conn, run.id, wait.correlation_key or "")
                if child is None or not child.status.terminal:
                    return None
                output: dict[str, JSON] = {
                    "run_id": str(child.id),
                    "workflow": child.workflow_name,
                    "status": child.status.value,
                    "context": child.context,
                }
                failure = None
                if child.status.value != "completed":
                    failure = Failure(
                        reason=FailureReason.CHILD_RUN_FAILED,
                        type="ChildRunFailed",
                        message=f"child run {child.id} ({child.workflow_name}) ended "
                        f"{child.status.value}",
                        details={"child": output, "error": child.error},
                        step=wait.step_name,
                    )
                change = await self._resolve(conn, run, defn, wait.step_name, output, failure)
            await changes.apply(conn, change)
        return change

    async def sweep_waits(self) -> int:
        """The timer loop's safety net: resolves waits whose event was published, or whose
        child ended, while no look-back ran (a crash between a wait's commit and its look-back,
        a child that ended on another replica)."""
        async with self._db.connect() as conn:
            run_ids = await waits.runs_with_open_lookups(conn)
        for run_id in run_ids:
            await self._look_back(run_id)
        return len(run_ids)
