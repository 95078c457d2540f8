"""Child runs: a handler of a run starts a run of another workflow (StartRun with a parent),
idempotent by key within the parent, linked both ways (the child names its parent and step;
the parent lists its children and logs `child_run_started`).

A child start takes its own path, not the batched statement of ordinary starts: one
transaction locks the parent (so a key is taken once, and never by a child of a run that just
ended), inserts the child and appends the event to the parent. When a child ends, whatever
ended it wakes its parent's wait_child step right after commit (`EngineCore._after_commit`,
from the parent id read with the run under lock or in the claim); the timer loop's sweep
resolves what that missed (`EventCommands.sweep_waits`).

Cancelling a parent does not cancel its children: a child is a run of its own (an order's
shipment may well go on), which CancelRun stops on its own id."""

from __future__ import annotations

import uuid
from datetime import datetime

from server.engine.core import log
from server.engine.errors import FailedPrecondition, FieldViolation, InvalidArgument
from server.engine.model import JSON, TERMINAL_RUN_STATUSES
from server.engine.run_commands import RunCommands, started_view
from server.engine.views import RunView
from server.store import changes, runs
from server.store.changes import NewEvent, RunChange
from server.store.db import retry_conflicts
from server.store.runs import NewRun


class ChildRunCommands(RunCommands):
    async def start_child_run(
        self,
        parent_run_id: uuid.UUID,
        parent_step: str,
        workflow: str,
        trigger: str,
        payload: dict[str, JSON],
        key: str,
    ) -> tuple[RunView, bool]:
        """Starts a run of `workflow` as a child of the parent's step `parent_step`, or returns
        the child the parent's handlers started with `key` already (created False)."""
        if not key:
            raise InvalidArgument(
                "a child run needs an idempotency key (unique within its parent)",
                [FieldViolation("idempotency_key", "is required with parent_run_id")],
            )
        self._check_size("payload", payload)
        while True:  # again only if a newer version was registered meanwhile
            new, change = await self._new_run(
                workflow, trigger, payload, key, parent=(parent_run_id, parent_step)
            )
            started = await self._insert_child(new, change, key)
            if started is not None:
                break
            self._latest_ids.pop(workflow, None)
        run, parent_change = started
        if parent_change is None:
            return run, False
        await self._after_commit(change)
        await self._after_commit(parent_change)
        log.info(
            "child_run_started",
            run_id=str(new.id),
            workflow=new.workflow_name,
            parent_run_id=str(parent_run_id),
            parent_step=parent_step,
        )
        return run, True

    @retry_conflicts
    async def _insert_child(
        self, new: NewRun, change: RunChange, key: str
    ) -> tuple[RunView, RunChange | None] | None:
        """Under the parent's lock: the child the key started already (no parent change), or
        the new child and the parent's change. None when a newer version of the child's
        workflow was registered since it was chosen (nothing written)."""
        assert new.parent_run_id is not None and new.parent_step is not None
        async with self._db.transaction() as conn:
            parent = await self._lock(conn, new.parent_run_id)
            parent_defn = await self._definition(conn, parent.workflow_id)
            if new.parent_step not in {s.name for s in parent_defn.steps}:
                raise InvalidArgument(
                    f"workflow '{parent_defn.name}' of run '{parent.id}' has no step "
                    f"'{new.parent_step}'",
                    [FieldViolation("parent_step", "must name a step of the parent's workflow")],
                    reason="STEP_NOT_FOUND",
                )
            existing = await runs.find_child_by_key(conn, parent.id, key)
            if existing is not None:
                # A retried attempt asking again: the child it started, whatever the parent's
                # state now.
                return await self._same_request(conn, existing, new, key), None
            if parent.status in TERMINAL_RUN_STATUSES:
                raise FailedPrecondition(
                    f"run '{parent.id}' is {parent.status.value}: it cannot start child runs",
                    reason="RUN_TERMINAL",
                    metadata={"run_id": str(parent.id), "status": parent.status.value},
                )
            (created_at,) = await changes.start(conn, [(new, change)])
            if created_at is changes.NotStarted.NOT_LATEST:
                return None
            # The key was free under the parent's lock, and ordinary runs cannot use its prefix.
            assert isinstance(created_at, datetime), created_at
            started: dict[str, JSON] = {
                "run_id": str(new.id),
                "workflow": new.workflow_name,
                "key": key,
            }
            parent_change = RunChange(
                parent.id, events=[NewEvent("child_run_started", new.parent_step, data=started)]
            )
            await changes.apply(conn, parent_change)
        return started_view(new, change, created_at), parent_change
