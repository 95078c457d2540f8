"""Commands on workflows and runs: register, start, read, cancel, replay. Each is one
statement or one transaction; dispatches are published after commit."""

from __future__ import annotations

import functools
import uuid
from dataclasses import replace
from datetime import UTC, datetime

import structlog

from server.engine import planner
from server.engine.batcher import Batcher
from server.engine.command_log import CommandLog
from server.engine.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    run_not_found,
)
from server.engine.model import (
    JSON,
    LIVE_STEP_STATUSES,
    TERMINAL_RUN_STATUSES,
    AttemptStatus,
    Failure,
    RunStatus,
    ScheduleOrigin,
    StepStatus,
    WorkflowDef,
)
from server.engine.payload import clock_defaulted, payload_hash, validate_payload
from server.engine.views import (
    AttemptView,
    EventView,
    RunView,
    StepView,
    WorkflowVersion,
)
from server.store import attempts, changes, commands, events, runs, workflows
from server.store.changes import NewEvent, RunChange, StepUpdate
from server.store.commands import CommandRecord
from server.store.db import Connection
from server.store.runs import KeyedRun, LockedRun, NewRun, RunFilter

log = structlog.get_logger("squidmesh.engine")


_STOPPED_AT_ONCE = LIVE_STEP_STATUSES - {StepStatus.RUNNING}
"""Step statuses a cancel ends at once (a running step ends when its worker stops)."""


class RunCommands(CommandLog):
    # --- workflows ---------------------------------------------------------------------------

    async def register_workflow(self, defn: WorkflowDef) -> tuple[WorkflowVersion, bool]:
        due_ms = None
        async with self._db.transaction() as conn:
            version, created = await workflows.register(conn, defn)
            if created:
                due_ms = await self._sync_schedules(conn, defn)
        if due_ms is not None:
            self._wakeups.timers_changed(due_ms)
        if created:
            self._latest_ids.pop(defn.name, None)
            log.info("workflow_registered", workflow=version.name, version=version.version)
        return version, created

    async def get_workflow(self, name: str, version: int = 0) -> WorkflowVersion:
        async with self._db.connect() as conn:
            found = await workflows.get(conn, name, version)
        if found is None:
            what = f"workflow '{name}'" + (f" version {version}" if version else "")
            raise NotFound(
                f"{what} does not exist", reason="WORKFLOW_NOT_FOUND", metadata={"workflow": name}
            )
        return found

    async def list_workflows(self, after_name: str, limit: int) -> list[WorkflowVersion]:
        async with self._db.connect() as conn:
            return await workflows.list_latest(conn, after_name, limit)

    # --- runs --------------------------------------------------------------------------------

    async def start_run(
        self,
        workflow: str,
        trigger: str,
        payload: dict[str, JSON],
        idempotency_key: str = "",
        *,
        source: RunView | None = None,
        source_workflow_id: int | None = None,
    ) -> tuple[RunView, bool]:
        self._check_size("payload", payload)
        if idempotency_key.startswith(runs.CHILD_KEY_PREFIX):
            raise InvalidArgument(
                f"idempotency keys starting with '{runs.CHILD_KEY_PREFIX}' are reserved",
                [
                    FieldViolation(
                        "idempotency_key",
                        f"must not start with '{runs.CHILD_KEY_PREFIX}' (child runs' keys)",
                    )
                ],
            )
        while True:  # again only if a newer version was registered meanwhile
            new, change = await self._new_run(
                workflow,
                trigger,
                payload,
                idempotency_key,
                source=source,
                source_workflow_id=source_workflow_id,
            )
            created_at = await self._start_batcher.submit((new, change))
            if created_at is not changes.NotStarted.NOT_LATEST:
                break
            self._latest_ids.pop(workflow, None)
        if created_at is changes.NotStarted.KEY_TAKEN:
            async with self._db.connect() as conn:
                return await self._existing_run(conn, new), False
        await self._after_commit(change)
        log.debug("run_started", run_id=str(new.id), workflow=new.workflow_name)
        return started_view(new, change, created_at), True

    async def _new_run(
        self,
        workflow: str,
        trigger: str,
        payload: dict[str, JSON],
        idempotency_key: str,
        *,
        source: RunView | None = None,
        source_workflow_id: int | None = None,
        parent: tuple[uuid.UUID, str] | None = None,
        scheduled: tuple[uuid.UUID, ScheduleOrigin] | None = None,
    ) -> tuple[NewRun, RunChange]:
        """A run to start on the workflow's latest version (a replay: its source's), its
        payload validated, and its first change (its entry steps). A child run (`parent`: the
        run and step whose handler starts it) stores its key as `runs.child_key`. A schedule's
        run (`scheduled`) has the id its tick names; a replay keeps its source's schedule."""
        if source_workflow_id is not None:
            workflow_id = source_workflow_id
        else:
            workflow_id = await self._latest_id(workflow)
        defn = await self._cached_definition(workflow_id)
        version = self._definitions[workflow_id]
        chosen = defn.trigger(trigger)
        if chosen is None:
            raise NotFound(
                f"workflow '{workflow}' has no trigger '{trigger}'",
                reason="TRIGGER_NOT_FOUND",
                metadata={"workflow": workflow, "trigger": trigger},
            )
        valid = validate_payload(chosen, payload, datetime.now(UTC))
        stored_key = idempotency_key or None
        if parent is not None:
            stored_key = runs.child_key(parent[0], idempotency_key)
        schedule = scheduled[1] if scheduled else (source.schedule if source else None)
        new = NewRun(
            id=scheduled[0] if scheduled else uuid.uuid4(),
            workflow_id=workflow_id,
            workflow_name=defn.name,
            workflow_version=version.version,
            trigger=chosen.name,
            payload=valid,
            payload_hash=payload_hash(valid, clock_defaulted(chosen, payload)),
            idempotency_key=stored_key,
            source_run_id=source.id if source else None,
            latest=source_workflow_id is None,
            parent_run_id=parent[0] if parent else None,
            parent_step=parent[1] if parent else None,
            schedule=schedule,
        )
        created: dict[str, JSON] = {
            "workflow": defn.name,
            "workflow_version": version.version,
            "trigger": chosen.name,
            "idempotency_key": idempotency_key,
            "source_run_id": str(source.id) if source else "",
        }
        if parent is not None:
            created.update(parent_run_id=str(parent[0]), parent_step=parent[1])
        if schedule is not None:
            created.update(
                schedule_id=schedule.schedule_id,
                schedule_nominal_time=schedule.nominal_at.isoformat(),
                schedule_origin=schedule.origin.value,
            )
        change = RunChange(
            new.id,
            events=[NewEvent("run_created", data=created)],
            parent_run_id=new.parent_run_id,
        )
        entry = planner.Plan(schedule=planner.entry_steps(defn))
        self._apply_plan(change, defn, entry, valid, {})
        if change.status is RunStatus.RUNNING:
            change.status = None  # pending until a worker claims an attempt
        return new, change

    async def _latest_id(self, workflow: str) -> int:
        """The id of the workflow's latest version, as last read (see `_latest_ids`)."""
        workflow_id = self._latest_ids.get(workflow)
        if workflow_id is None:
            async with self._db.connect() as conn:
                workflow_id = await workflows.latest_id(conn, workflow)
            if workflow_id is None:
                raise NotFound(
                    f"workflow '{workflow}' does not exist",
                    reason="WORKFLOW_NOT_FOUND",
                    metadata={"workflow": workflow},
                )
            self._latest_ids[workflow] = workflow_id
        return workflow_id

    @functools.cached_property
    def _start_batcher(self) -> Batcher[tuple[NewRun, RunChange], datetime | changes.NotStarted]:
        return Batcher(self._start_batch)

    async def _start_batch(
        self, runs_to_start: list[tuple[NewRun, RunChange]]
    ) -> list[datetime | changes.NotStarted]:
        """One statement for the runs started together."""
        async with self._db.connect() as conn:
            return await changes.start(conn, runs_to_start)

    async def _existing_run(self, conn: Connection, new: NewRun) -> RunView:
        """The run an idempotency key already started, if it was started by the same trigger
        with the same payload: a key names one request, whatever the workflow's triggers."""
        key = new.idempotency_key or ""
        existing = await runs.find_by_idempotency_key(conn, new.workflow_name, key)
        assert existing is not None
        return await self._same_request(conn, existing, new, key)

    async def _same_request(
        self, conn: Connection, existing: KeyedRun, new: NewRun, key: str
    ) -> RunView:
        """The run `existing`, which the key `key` started, if `new` asks for the same run
        (workflow, trigger and payload); otherwise the key was reused for another request."""
        if (existing.workflow_name, existing.trigger, existing.payload_hash) != (
            new.workflow_name,
            new.trigger,
            new.payload_hash,
        ):
            if existing.workflow_name != new.workflow_name:
                other = f"workflow '{existing.workflow_name}'"
            elif existing.trigger != new.trigger:
                other = f"trigger '{existing.trigger}'"
            else:
                other = "another payload"
            raise AlreadyExists(
                f"idempotency key '{key}' was used with {other} (run {existing.id})",
                reason="IDEMPOTENCY_KEY_REUSED",
                metadata={"run_id": str(existing.id), "trigger": existing.trigger},
            )
        found = await runs.get(conn, existing.id)
        assert found is not None
        return found

    async def get_run(self, run_id: uuid.UUID) -> RunView:
        async with self._db.snapshot() as conn:
            run = await runs.get(conn, run_id)
        if run is None:
            raise run_not_found(run_id)
        return run

    async def list_runs(
        self,
        where: RunFilter,
        cursor: tuple[datetime, uuid.UUID] | None,
        limit: int,
        *,
        full: bool = False,
    ) -> list[RunView]:
        async with self._db.connect() as conn:
            return await runs.list_page(conn, where, cursor, limit, full=full)

    async def run_history(
        self, run_id: uuid.UUID, after: tuple[int, int], limit: int
    ) -> tuple[list[EventView | CommandRecord], tuple[int, int] | None]:
        """A page of the run's history: its commands and events interleaved in time order
        (a command before the events it caused), after a cursor of (last event sequence, last
        command id; -1 before the start). Returns the entries and the next cursor (None on the
        last page)."""
        after_seq, after_command = after
        async with self._db.snapshot() as conn:
            if await events.run_position(conn, run_id) is None:
                raise run_not_found(run_id)
            page_events = await events.read_after(conn, run_id, after_seq, limit + 1)
            page_commands = await commands.page(conn, run_id, after_command, limit + 1)
        merged: list[EventView | CommandRecord] = sorted(
            [*page_events, *page_commands], key=_history_order
        )
        if after_command < 0:
            merged = _with_start(merged)
        more = len(merged) > limit
        taken = merged[:limit]
        last_seq = max((e.seq for e in taken if isinstance(e, EventView)), default=after_seq)
        last_command = max(
            (c.id for c in taken if isinstance(c, CommandRecord)), default=after_command
        )
        return taken, (last_seq, last_command) if more else None

    async def cancel_run(
        self, run_id: uuid.UUID, actor: str, reason: str, idempotency_key: str = ""
    ) -> RunView:
        running: list[tuple[str, str]] = []

        async def act(
            conn: Connection, run: LockedRun, defn: WorkflowDef
        ) -> tuple[RunChange | None, dict[str, JSON]]:
            if run.status in (RunStatus.CANCELLED, RunStatus.CANCELLING):
                return None, {}  # idempotent: already cancelled or on its way
            if run.status in TERMINAL_RUN_STATUSES:
                raise FailedPrecondition(
                    f"run '{run_id}' is {run.status.value} and cannot be cancelled",
                    reason="RUN_TERMINAL",
                    metadata={"run_id": str(run_id), "status": run.status.value},
                )
            statuses = await runs.step_statuses(conn, run_id)
            change = RunChange(
                run_id,
                parent_run_id=run.parent_run_id,
                cancel_scheduled_attempts=True,  # and closes the run's open waits
                step_updates=[
                    StepUpdate(name, StepStatus.CANCELLED, ended=True)
                    for name, status in statuses.items()
                    if status in _STOPPED_AT_ONCE
                ],
                events=[
                    NewEvent(
                        "cancel_requested",
                        data={
                            "actor": actor,
                            "reason": reason,
                            "idempotency_key": idempotency_key,
                        },
                    )
                ],
            )
            running[:] = await attempts.running(conn, run_id)
            if running:
                change.status = RunStatus.CANCELLING
            else:
                self._end_cancelled(change)
            return change, {}

        request = CommandRecord(run_id, "cancel", actor or "anonymous", reason, idempotency_key)
        await self._run_command(request, act)
        if running:
            self._wakeups.stop_attempts(running, "run cancelled")
        return await self.get_run(run_id)

    async def replay_run(
        self, run_id: uuid.UUID, allow_irreversible: bool, idempotency_key: str = ""
    ) -> RunView:
        source = await self.get_run(run_id)
        async with self._db.connect() as conn:
            workflow_id = await runs.workflow_id_of(conn, run_id)
            assert workflow_id is not None
            defn = await self._definition(conn, workflow_id)
        irreversible = [
            s.name
            for s in source.steps
            if s.status == StepStatus.COMPLETED and defn.step(s.name).irreversible
        ]
        request = CommandRecord(
            run_id, "replay", "", idempotency_key=idempotency_key or "", outcome="applied"
        )
        if irreversible and not allow_irreversible:
            refusal = FailedPrecondition(
                f"run '{run_id}' completed irreversible steps ({', '.join(irreversible)}); "
                "set allow_irreversible to replay it anyway",
                reason="IRREVERSIBLE_STEPS_COMPLETED",
                metadata={"steps": ",".join(irreversible)},
            )
            await self._record_refusal(request, refusal)
            raise refusal
        run, created = await self.start_run(
            source.workflow_name,
            source.trigger,
            source.payload,
            idempotency_key,
            source=source,
            source_workflow_id=workflow_id,
        )
        if created:  # a repeated key returns the replay it started, recorded then
            async with self._db.transaction() as conn:
                data: dict[str, JSON] = {
                    "run_id": str(run.id),
                    "allow_irreversible": allow_irreversible,
                }
                await commands.record(conn, replace(request, data=data))
        return run

    async def _lock(self, conn: Connection, run_id: uuid.UUID) -> LockedRun:
        run = await runs.lock(conn, run_id)
        if run is None:
            raise run_not_found(run_id)
        return run


def _with_start(entries: list[EventView | CommandRecord]) -> list[EventView | CommandRecord]:
    """The StartRun command (id 0: after it, the command cursor is 0), told by the run's first
    event, before it (no row of its own: StartRun's statement stays one insert per table)."""
    out: list[EventView | CommandRecord] = []
    for entry in entries:
        if isinstance(entry, EventView) and entry.seq == 1 and entry.type == "run_created":
            data = entry.data
            source = str(data.get("source_run_id") or "")
            out.append(
                CommandRecord(
                    entry.run_id,
                    "start",
                    str(data.get("actor") or ""),
                    idempotency_key=str(data.get("idempotency_key") or ""),
                    data={"source_run_id": source} if source else {},
                    created_at=entry.created_at,
                )
            )
        out.append(entry)
    return out


def _history_order(entry: EventView | CommandRecord) -> tuple[datetime, int, int]:
    if isinstance(entry, EventView):
        return (entry.created_at, 1, entry.seq)
    assert entry.created_at is not None
    return (entry.created_at, 0, entry.id)


def started_view(new: NewRun, change: RunChange, created_at: datetime) -> RunView:
    """The run StartRun just wrote, built from what it wrote rather than read back."""
    ended = created_at if change.ended else None
    return RunView(
        id=new.id,
        workflow_name=new.workflow_name,
        workflow_version=new.workflow_version,
        trigger=new.trigger,
        status=change.status or RunStatus.PENDING,
        payload=new.payload,
        context=new.payload,
        error=Failure.from_json(change.error),
        idempotency_key=runs.handler_key(new.idempotency_key, new.parent_run_id),
        source_run_id=new.source_run_id,
        parent_run_id=new.parent_run_id,
        parent_step=new.parent_step,
        schedule=new.schedule,
        last_seq=len(change.events),
        created_at=created_at,
        started_at=None,
        ended_at=ended,
        updated_at=created_at,
        steps=tuple(
            StepView(
                name=step.name,
                status=StepStatus(step.status),
                output=step.output,
                error=None,
                created_at=created_at,
                ended_at=created_at if step.ended else None,
                attempts=tuple(
                    AttemptView(
                        id=a.id,
                        number=a.number,
                        status=AttemptStatus.SCHEDULED,
                        worker_id=None,
                        output=None,
                        error=None,
                        created_at=created_at,
                        started_at=None,
                        ended_at=None,
                    )
                    for a in change.new_attempts
                    if a.step_name == step.name
                ),
            )
            for step in change.new_steps
        ),
    )
