"""The engine's commands. Each is one Postgres transaction: a fenced conditional update, a pure
decision (planner, retry policy), and one `RunChange` with its events. Dispatches are published
only after commit (outbox: the attempt rows are the intents; the reconciler re-publishes)."""

from __future__ import annotations

import secrets
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Protocol

import structlog

from server.engine import planner
from server.engine.context import merge_output, select_input
from server.engine.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    run_not_found,
)
from server.engine.model import (
    ACTIVE_RUN_STATUSES,
    JSON,
    TERMINAL_RUN_STATUSES,
    AttemptStatus,
    Failure,
    FailureReason,
    RunStatus,
    StepKind,
    StepStatus,
    WorkflowDef,
)
from server.engine.payload import payload_hash, validate_payload
from server.engine.retry import DEFAULT_RETRY_POLICY, decide_retry
from server.engine.views import (
    AttemptView,
    Dispatch,
    HeartbeatResult,
    ResultDecision,
    RunView,
    StartDecision,
    StepView,
    WorkflowVersion,
)
from server.store import attempts, changes, runs, workers, workflows
from server.store.changes import NewAttempt, NewEvent, NewStep, RunChange, StepUpdate
from server.store.db import Connection, Database, dumps
from server.store.runs import LockedRun, NewRun, RunFilter

log = structlog.get_logger("squidmesh.engine")

Publish = Callable[[list[Dispatch]], Awaitable[None]]


class Wakeups(Protocol):
    """Tells watchers and timer loops (of every replica) that something committed."""

    def run_changed(self, run_id: str) -> None: ...

    def timers_changed(self) -> None: ...


_LIVE_STEP_STATUSES = {
    StepStatus.SCHEDULED,
    StepStatus.RETRYING,
    StepStatus.WAITING,
    StepStatus.PAUSED,
}


_CLAIMS_REMEMBERED = 10_000

_UNCLAIMABLE = {AttemptStatus.SCHEDULED, AttemptStatus.CANCELLED}
"""A scheduled attempt whose claim failed belongs to a run that is no longer active."""
_CANCELLED_RUN = TERMINAL_RUN_STATUSES | {RunStatus.CANCELLING}


def unsupported_features(defn: WorkflowDef) -> list[FieldViolation]:
    """Parts of the contract this server accepts but does not run yet: refused at registration
    rather than stored and silently ignored."""
    problems = [
        FieldViolation(f"definition.triggers[{i}].cron", "cron triggers are not supported yet")
        for i, t in enumerate(defn.triggers)
        if t.cron is not None
    ]
    for i, s in enumerate(defn.steps):
        where = f"definition.steps[{i}]"
        if s.kind != StepKind.TASK:
            problems.append(
                FieldViolation(
                    f"{where}.{s.kind.value}", f"{s.kind.value} steps are not supported yet"
                )
            )
        if s.attempt_timeout_ms is not None:
            problems.append(
                FieldViolation(f"{where}.attempt_timeout", "attempt timeouts are not supported yet")
            )
        if s.compensate:
            problems.append(
                FieldViolation(f"{where}.compensate", "compensation is not supported yet")
            )
    return problems


@dataclass(frozen=True)
class EngineConfig:
    heartbeat_timeout_ms: int = 10_000
    max_payload_bytes: int = 1_048_576


class Engine:
    def __init__(
        self, db: Database, publish: Publish, wakeups: Wakeups, config: EngineConfig
    ) -> None:
        self._db = db
        self._publish = publish
        self._wakeups = wakeups
        self._config = config
        # Versions are immutable, so a definition once read never needs reading again.
        self._definitions: dict[int, WorkflowVersion] = {}
        # Attempts this process claimed, as the claim saw their run (see _complete_as_claimed).
        self._claims: OrderedDict[uuid.UUID, attempts.Claimed] = OrderedDict()

    # --- workflows ---------------------------------------------------------------------------

    async def register_workflow(self, defn: WorkflowDef) -> tuple[WorkflowVersion, bool]:
        unsupported = unsupported_features(defn)
        if unsupported:
            raise InvalidArgument(
                f"the definition uses {len(unsupported)} feature(s) this server does not run yet",
                unsupported,
                reason="FEATURE_UNSUPPORTED",
            )
        async with self._db.transaction() as conn:
            version, created = await workflows.register(conn, defn)
        if created:
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

    async def _definition(self, conn: Connection, workflow_id: int) -> WorkflowDef:
        version = self._definitions.get(workflow_id)
        if version is None:
            version = await workflows.get_by_id(conn, workflow_id)
            self._definitions[workflow_id] = version
        return version.definition

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
        async with self._db.connect() as conn:
            workflow_id = source_workflow_id or await workflows.latest_id(conn, workflow)
            if workflow_id is None:
                raise NotFound(
                    f"workflow '{workflow}' does not exist",
                    reason="WORKFLOW_NOT_FOUND",
                    metadata={"workflow": workflow},
                )
            defn = await self._definition(conn, workflow_id)
        version = self._definitions[workflow_id]
        chosen = defn.trigger(trigger)
        if chosen is None:
            raise NotFound(
                f"workflow '{workflow}' has no trigger '{trigger}'",
                reason="TRIGGER_NOT_FOUND",
                metadata={"workflow": workflow, "trigger": trigger},
            )
        payload = validate_payload(chosen, payload, datetime.now(UTC))
        new = NewRun(
            id=uuid.uuid4(),
            workflow_id=workflow_id,
            workflow_name=defn.name,
            workflow_version=version.version,
            trigger=chosen.name,
            payload=payload,
            payload_hash=payload_hash(payload),
            idempotency_key=idempotency_key or None,
            source_run_id=source.id if source else None,
        )
        change = RunChange(
            new.id,
            events=[
                NewEvent(
                    "run_created",
                    data={
                        "workflow": defn.name,
                        "workflow_version": version.version,
                        "trigger": chosen.name,
                        "idempotency_key": idempotency_key,
                        "source_run_id": str(source.id) if source else "",
                    },
                )
            ],
        )
        for name in planner.entry_steps(defn):
            self._schedule(change, defn, name)
        async with self._db.connect() as conn:
            created_at = await changes.start(conn, new, change)
            if created_at is None:
                return await self._existing_run(conn, new), False
        await self._after_commit(change)
        log.debug("run_started", run_id=str(new.id), workflow=defn.name)
        return _started_view(new, change, created_at), True

    async def _existing_run(self, conn: Connection, new: NewRun) -> RunView:
        """The run an idempotency key already started, if the payload is the same."""
        key = new.idempotency_key or ""
        existing = await runs.find_by_idempotency_key(conn, new.workflow_name, key)
        assert existing is not None
        if existing[1] != new.payload_hash:
            raise AlreadyExists(
                f"idempotency key '{key}' was used with another payload",
                reason="IDEMPOTENCY_KEY_REUSED",
                metadata={"run_id": str(existing[0])},
            )
        found = await runs.get(conn, existing[0])
        assert found is not None
        return found

    async def get_run(self, run_id: uuid.UUID) -> RunView:
        async with self._db.snapshot() as conn:
            run = await runs.get(conn, run_id)
        if run is None:
            raise run_not_found(run_id)
        return run

    async def list_runs(
        self, where: RunFilter, cursor: tuple[datetime, uuid.UUID] | None, limit: int
    ) -> list[RunView]:
        async with self._db.connect() as conn:
            return await runs.list_page(conn, where, cursor, limit)

    async def cancel_run(
        self, run_id: uuid.UUID, actor: str, reason: str, idempotency_key: str = ""
    ) -> RunView:
        async with self._db.transaction() as conn:
            run = await self._lock(conn, run_id)
            if run.status in (RunStatus.CANCELLED, RunStatus.CANCELLING):
                pass  # idempotent: already cancelled or on its way
            elif run.status in TERMINAL_RUN_STATUSES:
                raise FailedPrecondition(
                    f"run '{run_id}' is {run.status.value} and cannot be cancelled",
                    reason="RUN_TERMINAL",
                    metadata={"run_id": str(run_id), "status": run.status.value},
                )
            else:
                statuses = await runs.step_statuses(conn, run_id)
                change = RunChange(
                    run_id,
                    cancel_scheduled_attempts=True,
                    step_updates=[
                        StepUpdate(name, StepStatus.CANCELLED, ended=True)
                        for name, status in statuses.items()
                        if status in _LIVE_STEP_STATUSES
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
                if await attempts.running_count(conn, run_id):
                    change.status = RunStatus.CANCELLING
                else:
                    self._end_cancelled(change)
                await changes.apply(conn, change)
        self._wakeups.run_changed(str(run_id))
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
        if irreversible and not allow_irreversible:
            raise FailedPrecondition(
                f"run '{run_id}' completed irreversible steps ({', '.join(irreversible)}); "
                "set allow_irreversible to replay it anyway",
                reason="IRREVERSIBLE_STEPS_COMPLETED",
                metadata={"steps": ",".join(irreversible)},
            )
        run, _ = await self.start_run(
            source.workflow_name,
            source.trigger,
            source.payload,
            idempotency_key,
            source=source,
            source_workflow_id=workflow_id,
        )
        return run

    # --- attempts (the worker protocol) ------------------------------------------------------

    async def claim_attempt(
        self, attempt_id: uuid.UUID, token: str, worker_id: str
    ) -> StartDecision:
        async with self._db.connect() as conn:  # one statement, its own transaction
            claimed = await attempts.claim(conn, attempt_id, token, worker_id)
            if claimed is None:
                state = await attempts.state(conn, attempt_id)
                if state is None:
                    return StartDecision(accepted=False, refusal_reason="unknown")
                if state.token != token:
                    return StartDecision(accepted=False, refusal_reason="stale")
                if state.status == AttemptStatus.RUNNING and state.worker_id == worker_id:
                    claimed = state.claimed  # the same worker resending after a reconnect
                elif state.status in _UNCLAIMABLE or state.run_status in _CANCELLED_RUN:
                    return StartDecision(accepted=False, refusal_reason="cancelled")
                else:
                    return StartDecision(accepted=False, refusal_reason="duplicate")
            defn = await self._definition(conn, claimed.workflow_id)
        self._wakeups.run_changed(str(claimed.run_id))
        self._claims[attempt_id] = claimed
        if len(self._claims) > _CLAIMS_REMEMBERED:
            self._claims.popitem(last=False)  # results that never came (lost workers)
        step = defn.step(claimed.step_name)
        return StartDecision(
            accepted=True,
            run_id=claimed.run_id,
            workflow=claimed.workflow_name,
            step=claimed.step_name,
            handler=claimed.handler,
            attempt_number=claimed.number,
            input=select_input(step, claimed.context),
            idempotency_key=f"{claimed.run_id}:{claimed.step_name}",
            heartbeat_timeout_ms=claimed.heartbeat_timeout_ms,
        )

    async def complete_attempt(
        self, attempt_id: uuid.UUID, token: str, output: JSON
    ) -> ResultDecision:
        try:
            self._check_size("output", output)
        except ResourceExhausted as exc:
            failure = Failure(
                reason="output_too_large",
                type="OutputTooLarge",
                message=exc.message,
                non_retryable=True,
            )
            return await self.fail_attempt(attempt_id, token, failure, None)
        claimed = self._claims.pop(attempt_id, None)
        if claimed is not None and await self._complete_as_claimed(
            attempt_id, token, output, claimed
        ):
            return ResultDecision(accepted=True)
        async with self._db.transaction() as conn:
            finished = await attempts.finish(
                conn, attempt_id, token, AttemptStatus.SUCCEEDED, output=output
            )
            if finished is None:
                return await self._refusal(conn, attempt_id, token, AttemptStatus.SUCCEEDED)
            run, name, number = finished.run, finished.step_name, finished.number
            defn = await self._definition(conn, run.workflow_id)
            if run.status in ACTIVE_RUN_STATUSES:
                statuses: dict[str, StepStatus] = {}
                if defn.uses_dependencies:
                    statuses = await runs.step_statuses(conn, run.id)
                change = self._success(defn, run.id, name, number, run.context, output, statuses)
            else:
                change = RunChange(
                    run.id,
                    step_updates=[
                        StepUpdate(name, StepStatus.COMPLETED, output=output, ended=True)
                    ],
                    events=[NewEvent("step_completed", name, number, {"output": output})],
                )
                if run.status == RunStatus.CANCELLING:
                    change.context = merge_output(run.context, defn.step(name), output)
                    await self._settle_cancel(conn, change)
                # else a parallel branch already ended the run: keep the record only
            await changes.apply(conn, change)
        await self._after_commit(change)
        return ResultDecision(accepted=True)

    async def _complete_as_claimed(
        self, attempt_id: uuid.UUID, token: str, output: JSON, claimed: attempts.Claimed
    ) -> bool:
        """The common case in one statement: nothing happened to the run since this process
        claimed the attempt, so the decision can be made from the run as the claim saw it.
        False when that no longer holds (nothing written)."""
        defn = self._definitions[claimed.workflow_id].definition
        if defn.uses_dependencies:
            return False  # readiness depends on the other steps' states
        change = self._success(
            defn, claimed.run_id, claimed.step_name, claimed.number, claimed.context, output, {}
        )
        async with self._db.connect() as conn:
            applied = await changes.apply_if_current(
                conn,
                change,
                attempt_id=attempt_id,
                token=token,
                output=output,
                expected_seq=claimed.last_seq,
            )
        if applied:
            await self._after_commit(change)
        return applied

    def _success(
        self,
        defn: WorkflowDef,
        run_id: uuid.UUID,
        name: str,
        number: int,
        context: dict[str, JSON],
        output: JSON,
        statuses: dict[str, StepStatus],
    ) -> RunChange:
        """The change that follows a succeeded attempt of an active run."""
        context = merge_output(context, defn.step(name), output)
        change = RunChange(
            run_id,
            context=context,
            step_updates=[StepUpdate(name, StepStatus.COMPLETED, output=output, ended=True)],
            events=[NewEvent("step_completed", name, number, {"output": output})],
        )
        statuses[name] = StepStatus.COMPLETED
        self._apply_plan(change, defn, planner.after_success(defn, name, context, statuses))
        return change

    async def fail_attempt(
        self,
        attempt_id: uuid.UUID,
        token: str,
        failure: Failure,
        retry_after_ms: int | None,
        *,
        lease_expired: bool = False,
    ) -> ResultDecision:
        self._claims.pop(attempt_id, None)
        async with self._db.transaction() as conn:
            finished = await attempts.finish(
                conn,
                attempt_id,
                token,
                AttemptStatus.FAILED,
                error=failure.to_json(),
                only_if_lease_expired=lease_expired,
            )
            if finished is None:
                return await self._refusal(conn, attempt_id, token, AttemptStatus.FAILED)
            run, name, number = finished.run, finished.step_name, finished.number
            failure = replace(failure, step=name, attempt_number=number)
            defn = await self._definition(conn, run.workflow_id)
            step = defn.step(name)
            change = RunChange(
                run.id,
                events=[NewEvent("attempt_failed", name, number, {"error": failure.to_json()})],
            )
            if run.status == RunStatus.CANCELLING:
                change.step_updates.append(
                    StepUpdate(name, StepStatus.CANCELLED, error=failure.to_json(), ended=True)
                )
                await self._settle_cancel(conn, change)
            elif run.status in TERMINAL_RUN_STATUSES:
                change.step_updates.append(
                    StepUpdate(name, StepStatus.FAILED, error=failure.to_json(), ended=True)
                )
            else:
                decision = decide_retry(
                    step.retry or DEFAULT_RETRY_POLICY, number, failure, retry_after_ms
                )
                if decision.retry:
                    self._schedule(
                        change, defn, name, number=number + 1, delay_ms=decision.delay_ms
                    )
                    change.step_updates.append(
                        StepUpdate(
                            name,
                            StepStatus.RETRYING if decision.delay_ms else StepStatus.SCHEDULED,
                            error=failure.to_json(),
                        )
                    )
                    if decision.delay_ms:
                        change.status = RunStatus.RETRYING
                else:
                    change.step_updates.append(
                        StepUpdate(name, StepStatus.FAILED, error=failure.to_json(), ended=True)
                    )
                    change.events.append(
                        NewEvent(
                            "step_failed",
                            name,
                            number,
                            {"error": failure.to_json(), "retry": decision.reason},
                        )
                    )
                    plan = planner.after_failure(defn, name, failure, run.context)
                    self._apply_plan(change, defn, plan)
            await changes.apply(conn, change)
        await self._after_commit(change)
        return ResultDecision(accepted=True)

    async def heartbeat(
        self, worker_id: str, beats: list[tuple[uuid.UUID, str, JSON]]
    ) -> HeartbeatResult:
        async with self._db.connect() as conn:
            alive = await attempts.heartbeat(conn, worker_id, beats)
        kept = {attempt_id for attempt_id, _ in alive}
        return HeartbeatResult(
            cancel=[attempt_id for attempt_id, cancel in alive if cancel],
            lost=[str(attempt_id) for attempt_id, _, _ in beats if str(attempt_id) not in kept],
        )

    async def register_worker(
        self,
        worker_id: str,
        queues: list[str],
        handlers: list[str],
        concurrency: int,
        labels: dict[str, str],
    ) -> None:
        async with self._db.transaction() as conn:
            await workers.register(conn, worker_id, queues, handlers, concurrency, labels)

    # --- timers and reconciliation -----------------------------------------------------------

    async def expire_leases(self) -> int:
        """Fails running attempts whose worker stopped heartbeating, as worker_lost."""
        async with self._db.connect() as conn:
            expired = await attempts.expired_leases(conn)
        for attempt_id, token in expired:
            await self.fail_attempt(
                attempt_id,
                token,
                Failure(
                    reason=FailureReason.WORKER_LOST,
                    type="WorkerLost",
                    message="the worker stopped heartbeating and its lease expired",
                ),
                None,
                lease_expired=True,
            )
        return len(expired)

    async def kick_due(self, dispatch_timeout_ms: int) -> int:
        """Publishes due timers and re-publishes dispatches that were never claimed."""
        async with self._db.connect() as conn:
            due = await attempts.kick_due(conn, dispatch_timeout_ms)
        if due:
            await self._publish(due)
        return len(due)

    async def next_timer_ms(self) -> float | None:
        async with self._db.connect() as conn:
            return await attempts.next_timer_due_ms(conn)

    # --- helpers -----------------------------------------------------------------------------

    async def _lock(self, conn: Connection, run_id: uuid.UUID) -> LockedRun:
        run = await runs.lock(conn, run_id)
        if run is None:
            raise run_not_found(run_id)
        return run

    async def _refusal(
        self, conn: Connection, attempt_id: uuid.UUID, token: str, outcome: AttemptStatus
    ) -> ResultDecision:
        state = await attempts.state(conn, attempt_id)
        if state is None:
            return ResultDecision(accepted=False, refusal_reason="unknown")
        if state.token == token and state.status == outcome:
            return ResultDecision(accepted=True)  # a resend of a result already recorded
        if state.token != token or not state.is_latest:
            return ResultDecision(accepted=False, refusal_reason="stale")
        return ResultDecision(accepted=False, refusal_reason=f"attempt is {state.status.value}")

    def _schedule(
        self,
        change: RunChange,
        defn: WorkflowDef,
        name: str,
        *,
        number: int = 1,
        delay_ms: int = 0,
    ) -> None:
        step = defn.step(name)
        if number == 1:  # retries reuse the step's row
            change.new_steps.append(NewStep(name, defn.steps.index(step), StepStatus.SCHEDULED))
        change.new_attempts.append(
            NewAttempt(
                id=uuid.uuid4(),
                step_name=name,
                number=number,
                token=secrets.token_hex(8),
                queue=step.queue,
                handler=step.handler,
                heartbeat_timeout_ms=step.heartbeat_timeout_ms or self._config.heartbeat_timeout_ms,
                delay_ms=delay_ms,
            )
        )
        change.events.append(
            NewEvent(
                "attempt_scheduled",
                name,
                number,
                {"queue": step.queue, "handler": step.handler, "delay_ms": delay_ms},
            )
        )

    def _apply_plan(self, change: RunChange, defn: WorkflowDef, plan: planner.Plan) -> None:
        for from_step, to in plan.transitions:
            change.events.append(NewEvent("transition", from_step, data={"to": to}))
        for name in plan.schedule:
            self._schedule(change, defn, name)
        if plan.schedule:
            change.status = RunStatus.RUNNING
        if plan.complete:
            change.status = RunStatus.COMPLETED
            change.ended = True
            change.events.append(NewEvent("run_completed"))
        elif plan.failure is not None:
            change.status = RunStatus.FAILED
            change.ended = True
            change.error = plan.failure.to_json()
            change.cancel_scheduled_attempts = True
            change.events.append(
                NewEvent(
                    "run_failed", plan.failure.step or None, data={"error": plan.failure.to_json()}
                )
            )

    async def _settle_cancel(self, conn: Connection, change: RunChange) -> None:
        """A cancelling run becomes cancelled once no attempt of it runs any more."""
        if not await attempts.running_count(conn, change.run_id):
            self._end_cancelled(change)

    @staticmethod
    def _end_cancelled(change: RunChange) -> None:
        change.status = RunStatus.CANCELLED
        change.ended = True
        change.cancel_scheduled_attempts = True
        change.events.append(NewEvent("run_cancelled"))

    async def _after_commit(self, change: RunChange) -> None:
        """Publishes the attempts due now and wakes watchers and timer loops."""
        self._wakeups.run_changed(str(change.run_id))
        if any(a.delay_ms for a in change.new_attempts):
            self._wakeups.timers_changed()
        due = [
            Dispatch(a.id, a.token, change.run_id, a.step_name, a.handler, a.queue)
            for a in change.new_attempts
            if a.delay_ms == 0
        ]
        if due:
            await self._publish(due)

    def _check_size(self, what: str, value: JSON) -> None:
        size = len(dumps(value))
        if size > self._config.max_payload_bytes:
            raise ResourceExhausted(
                f"{what} is {size} bytes, more than the limit of {self._config.max_payload_bytes}",
                reason=f"{what.upper()}_TOO_LARGE",
                metadata={"size": str(size), "limit": str(self._config.max_payload_bytes)},
            )


def _started_view(new: NewRun, change: RunChange, created_at: datetime) -> RunView:
    """The run StartRun just wrote, built from what it wrote rather than read back."""
    return RunView(
        id=new.id,
        workflow_name=new.workflow_name,
        workflow_version=new.workflow_version,
        trigger=new.trigger,
        status=RunStatus.PENDING,
        payload=new.payload,
        context=new.payload,
        error=None,
        idempotency_key=new.idempotency_key,
        source_run_id=new.source_run_id,
        last_seq=len(change.events),
        created_at=created_at,
        started_at=None,
        ended_at=None,
        updated_at=created_at,
        steps=tuple(
            StepView(
                name=a.step_name,
                status=StepStatus.SCHEDULED,
                output=None,
                error=None,
                created_at=created_at,
                ended_at=None,
                attempts=(
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
                    ),
                ),
            )
            for a in change.new_attempts
        ),
    )
