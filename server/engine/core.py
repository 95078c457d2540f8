"""What the engine's commands share: the database, publishing and wake-ups after commit, the
definition cache, and turning a plan into the rows of a `RunChange`."""

from __future__ import annotations

import secrets
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import structlog

from server.engine import planner
from server.engine.context import missing_input, missing_paths, render
from server.engine.errors import DomainError, ResourceExhausted
from server.engine.model import (
    JSON,
    LIVE_STEP_STATUSES,
    AttemptKind,
    Failure,
    FailureReason,
    RunStatus,
    Step,
    StepKind,
    StepStatus,
    WorkflowDef,
    compensated_step,
    compensation_step,
)
from server.engine.usage import Usage
from server.engine.views import (
    Dispatch,
    WorkflowVersion,
)
from server.store import attempts, workflows
from server.store.changes import NewAttempt, NewEvent, NewStep, NewWait, RunChange
from server.store.db import Connection, Database, dumps

log = structlog.get_logger("squidmesh.engine")

Publish = Callable[[list[Dispatch]], Awaitable[None]]


class Wakeups(Protocol):
    """Tells watchers and timer loops (of every replica) that something committed."""

    def run_changed(self, run_id: str) -> None: ...

    def timers_changed(self, due_in_ms: float) -> None:
        """A timer or a deadline was set, the earliest due in `due_in_ms` milliseconds."""
        ...

    def stop_attempts(self, worker_attempts: list[tuple[str, str]], reason: str) -> None:
        """Asks the workers running these (worker id, attempt id) to stop them."""
        ...


@dataclass(frozen=True)
class EngineConfig:
    heartbeat_timeout_ms: int = 10_000
    max_payload_bytes: int = 1_048_576
    handoff: bool = True
    """Whether results may hand their worker the run's next attempt (`engine.handoff`)."""
    dispatch_timeout_ms: int = 30_000
    """The longest an attempt a worker declined waits to be published again."""
    heartbeat_interval_ms: int = 1_000
    """How often workers heartbeat, idle or not: how soon a silent one is no longer live."""


class EngineCore:
    def __init__(
        self, db: Database, publish: Publish, wakeups: Wakeups, config: EngineConfig
    ) -> None:
        self._db = db
        self._publish = publish
        self._wakeups = wakeups
        self._config = config
        # Versions are immutable, so a definition once read never needs reading again.
        self._definitions: dict[int, WorkflowVersion] = {}
        # The latest version of each workflow as this process last read it. StartRun trusts it
        # without a query: its statement writes the run only if no newer version exists.
        self._latest_ids: dict[str, int] = {}
        # Attempts this process claimed, as the claim saw their run (see _complete_as_claimed).
        self._claims: OrderedDict[uuid.UUID, attempts.Claimed] = OrderedDict()
        # The share of firing schedules that is the ticks' runs' own work (`schedule_commands`).
        self.tick_runs_usage = Usage()

    async def _cached_definition(self, workflow_id: int) -> WorkflowDef:
        """The definition of a version, reading it only the first time."""
        version = self._definitions.get(workflow_id)
        if version is not None:
            return version.definition
        async with self._db.connect() as conn:
            return await self._definition(conn, workflow_id)

    async def _definition(self, conn: Connection, workflow_id: int) -> WorkflowDef:
        version = self._definitions.get(workflow_id)
        if version is None:
            version = await workflows.get_by_id(conn, workflow_id)
            self._definitions[workflow_id] = version
        return version.definition

    def _schedule(
        self,
        change: RunChange,
        defn: WorkflowDef,
        name: str,
        *,
        number: int = 1,
        delay_ms: int = 0,
    ) -> None:
        """Adds an attempt of a task step (and, for its first attempt, the step's row), or the
        timer of a wait step."""
        step = defn.step(name)
        wait = step.kind is StepKind.WAIT
        if number == 1:  # retries reuse the step's row
            change.new_steps.append(
                NewStep(
                    name,
                    _position(defn, name),
                    StepStatus.WAITING if wait else StepStatus.SCHEDULED,
                )
            )
        change.new_attempts.append(
            NewAttempt(
                id=uuid.uuid4(),
                step_name=name,
                number=number,
                token=secrets.token_hex(8),
                queue=step.queue,
                handler=step.handler,
                heartbeat_timeout_ms=step.heartbeat_timeout_ms or self._config.heartbeat_timeout_ms,
                delay_ms=step.wait_ms if wait else delay_ms,
                kind=AttemptKind.WAIT if wait else AttemptKind.TASK,
                attempt_timeout_ms=step.attempt_timeout_ms,
            )
        )
        data: dict[str, JSON] = (
            {"wait_ms": step.wait_ms}
            if wait
            else {"queue": step.queue, "handler": step.handler, "delay_ms": delay_ms}
        )
        change.events.append(NewEvent("attempt_scheduled", name, number, data))

    def _log_step(
        self, change: RunChange, defn: WorkflowDef, step: Step, context: dict[str, JSON]
    ) -> None:
        """Runs a log step on the spot: its line is written after commit (`_after_commit`)."""
        message = render(step.log_message, context)
        output = {"message": message}
        change.new_steps.append(
            NewStep(
                step.name,
                _position(defn, step.name),
                StepStatus.COMPLETED,
                output=output,
                ended=True,
            )
        )
        change.events.append(
            NewEvent("log", step.name, data={"message": message, "workflow": defn.name})
        )
        change.events.append(NewEvent("step_completed", step.name, data={"output": output}))

    def _apply_plan(
        self,
        change: RunChange,
        defn: WorkflowDef,
        plan: planner.Plan,
        context: dict[str, JSON],
        statuses: dict[str, StepStatus],
        completed: Sequence[str] = (),
    ) -> None:
        """Turns a plan into rows. Log steps run on the spot and their successors are planned
        in turn; `statuses` (every step the run reached) is updated as steps are scheduled.
        `completed` (the completed steps in completion order) is needed only when the plan
        fails a workflow that compensates."""
        plans = [plan]
        ends = planner.Plan()
        while plans:
            current = plans.pop(0)
            for from_step, to in current.transitions:
                change.events.append(NewEvent("transition", from_step, data={"to": to}))
            for name in current.schedule:
                step = defn.step(name)
                missing = _missing(step, context)
                if step.kind is StepKind.LOG:
                    self._log_step(change, defn, step, context)
                    statuses[name] = StepStatus.COMPLETED
                    completed = (*completed, name)
                    plans.append(planner.after_success(defn, name, context, statuses))
                elif missing:
                    failure = _input_missing(step, missing)
                    change.new_steps.append(
                        NewStep(
                            name,
                            _position(defn, name),
                            StepStatus.FAILED,
                            error=failure.to_json(),
                            ended=True,
                        )
                    )
                    change.events.append(
                        NewEvent(
                            "step_failed",
                            name,
                            data={"error": failure.to_json(), "retry": "non_retryable"},
                        )
                    )
                    statuses[name] = StepStatus.FAILED
                    plans.append(planner.after_failure(defn, name, failure, context))
                elif step.kind.gate:
                    statuses[name] = _park(change, defn, step, context)
                else:
                    self._schedule(change, defn, name)
                    statuses[name] = (
                        StepStatus.WAITING if step.kind is StepKind.WAIT else StepStatus.SCHEDULED
                    )
            if current.complete or current.failure is not None:
                ends = current
        if ends.failure is not None:
            self._fail_run(change, defn, ends.failure, completed, statuses)
        elif ends.complete:
            change.status = RunStatus.COMPLETED
            change.ended = True
            change.events.append(NewEvent("run_completed"))
        else:
            status = run_status_of(statuses.values())
            if status is not None:
                change.status = status

    def _fail_run(
        self,
        change: RunChange,
        defn: WorkflowDef,
        failure: Failure,
        completed: Sequence[str],
        statuses: dict[str, StepStatus],
    ) -> None:
        """The run fails with `failure`, after compensating its completed steps, if any
        declare a compensation. In a workflow that compensates, steps still running (parallel
        branches: `statuses`) are let end first: one that completes is compensated too, and
        compensations go newest first (`_continue_compensation`)."""
        change.error = failure.to_json()
        change.cancel_scheduled_attempts = True
        _withdraw_new_steps(change, statuses)
        to_compensate = planner.compensations(defn, completed, ())
        running = []
        if defn.compensates:
            running = sorted(
                name
                for name, status in statuses.items()
                if status is StepStatus.RUNNING and name != failure.step
            )
        if to_compensate or running:
            change.status = RunStatus.COMPENSATING
            change.events.append(
                NewEvent(
                    "compensation_started",
                    failure.step or None,
                    data={
                        "error": failure.to_json(),
                        "steps": list(to_compensate),
                        "waiting_for": running,
                    },
                )
            )
            if not running:
                self._schedule(change, defn, compensation_step(to_compensate[0]))
            return
        change.status = RunStatus.FAILED
        change.ended = True
        change.events.append(
            NewEvent("run_failed", failure.step or None, data={"error": failure.to_json()})
        )

    async def _settle_cancel(self, conn: Connection, change: RunChange) -> None:
        """A cancelling run becomes cancelled once no attempt of it runs any more."""
        if not await attempts.running(conn, change.run_id):
            self._end_cancelled(change)

    @staticmethod
    def _end_cancelled(change: RunChange) -> None:
        change.status = RunStatus.CANCELLED
        change.ended = True
        change.cancel_scheduled_attempts = True
        change.events.append(NewEvent("run_cancelled"))

    async def _after_commit(self, change: RunChange) -> None:
        """Writes the lines of log steps, publishes the attempts due now (but the one handed
        over), and wakes watchers and timer loops (after publishing: a worker waits for the
        publish, a watcher only for news)."""
        for event in change.events:
            if event.type == "log":
                log.info(
                    "workflow_log",
                    run_id=str(change.run_id),
                    step=event.step_name,
                    **event.data,
                )
        due = [
            Dispatch(a.id, a.token, change.run_id, a.step_name, a.handler, a.queue)
            for a in change.new_attempts
            if a.delay_ms == 0 and a.kind == AttemptKind.TASK and not a.handed_over
        ]
        try:
            if due:
                await self._publish(due)
        finally:
            self._wakeups.run_changed(str(change.run_id))
            timers = [
                a.delay_ms
                for a in change.new_attempts
                if (a.delay_ms or a.kind == AttemptKind.WAIT) and not a.handed_over
            ]
            timers += [w.deadline_ms for w in change.new_waits if w.deadline_ms is not None]
            if timers:
                self._wakeups.timers_changed(min(timers))
        if any(w.kind in ("event", "child") for w in change.new_waits):
            await self._look_back(change.run_id)
        if change.ended and change.parent_run_id is not None:
            await self._wake_parent(change.run_id, change.parent_run_id)

    async def _wake_parent(self, run_id: uuid.UUID, parent_run_id: uuid.UUID) -> None:
        """A child run ended: its parent's wait_child step for it resolves now, here. If this
        fails (the database went away), the timer loop's sweep resolves it later."""
        try:
            await self._look_back(parent_run_id)
        except DomainError as exc:
            log.warning(
                "parent_not_woken",
                run_id=str(run_id),
                parent_run_id=str(parent_run_id),
                error=exc.message,
            )

    async def _sync_schedules(self, conn: Connection, defn: WorkflowDef) -> float | None:
        """A new version was registered: its cron triggers' schedules follow it
        (`schedule_commands.ScheduleCommands`). Returns when the earliest changed one is due
        (ms from now), if any."""
        raise NotImplementedError

    async def _look_back(self, run_id: uuid.UUID) -> None:
        """A run just started waiting for an event or a child run: what it waits for may have
        happened already (`event_commands.EventCommands`)."""
        raise NotImplementedError

    def _check_size(self, what: str, value: JSON) -> None:
        size = len(dumps(value))
        if size > self._config.max_payload_bytes:
            raise ResourceExhausted(
                f"{what} is {size} bytes, more than the limit of {self._config.max_payload_bytes}",
                reason=f"{what.upper()}_TOO_LARGE",
                metadata={"size": str(size), "limit": str(self._config.max_payload_bytes)},
            )


def run_status_of(step_statuses: Iterable[StepStatus]) -> RunStatus | None:
    """The status of a run that goes on, from its steps (`statuses` covers every step in
    dependency mode; otherwise one step at a time is live): waiting when waits are all that is
    left, paused when a person is all it also waits for, running otherwise. None when no step
    is live."""
    live = {status for status in step_statuses if status in LIVE_STEP_STATUSES}
    if not live:
        return None
    if live == {StepStatus.WAITING}:
        return RunStatus.WAITING
    if live <= {StepStatus.WAITING, StepStatus.PAUSED}:
        return RunStatus.PAUSED
    return RunStatus.RUNNING


_WAIT_KINDS = {
    StepKind.PAUSE: "pause",
    StepKind.APPROVAL: "approval",
    StepKind.WAIT_EVENT: "event",
    StepKind.WAIT_CHILD: "child",
}


def _park(change: RunChange, defn: WorkflowDef, step: Step, context: dict[str, JSON]) -> StepStatus:
    """A gate step reached: its row waits (paused for a person, waiting for an event or a
    child run), with the `waits` row that says what for. No attempt, no worker slot."""
    kind = _WAIT_KINDS[step.kind]
    person = step.kind in (StepKind.PAUSE, StepKind.APPROVAL)
    status = StepStatus.PAUSED if person else StepStatus.WAITING
    key = render(step.correlation_key, context) if not person else None
    wait = NewWait(
        step.name,
        kind,
        event_name=step.event or None,
        correlation_key=key,
        deadline_ms=step.deadline_ms,
    )
    change.new_steps.append(NewStep(step.name, _position(defn, step.name), status))
    change.new_waits.append(wait)
    data: dict[str, JSON] = {"kind": kind}
    if step.deadline_ms is not None:
        data["deadline_ms"] = step.deadline_ms
    if step.kind is StepKind.APPROVAL:
        data["required_approvals"] = step.required_approvals
    elif step.kind is StepKind.WAIT_EVENT:
        data.update(event=step.event, correlation_key=key)
    elif step.kind is StepKind.WAIT_CHILD:
        data["key"] = key
    change.events.append(NewEvent("step_waiting", step.name, data=data))
    return status


def _missing(step: Step, context: dict[str, JSON]) -> list[dict[str, str]]:
    """What the context lacks for the step: a task's input, a wait's correlation key."""
    if step.kind is StepKind.TASK:
        return missing_input(step, context)
    if step.kind in (StepKind.WAIT_EVENT, StepKind.WAIT_CHILD):
        return missing_paths(step.correlation_key, context)
    return []


def _withdraw_new_steps(change: RunChange, statuses: dict[str, StepStatus]) -> None:
    """The steps this change scheduled (parallel branches made ready with a step whose input
    is missing) are cancelled before they are written: the run fails first. (Cancelling the
    run's scheduled attempts in the change's statement cannot see rows it inserts.)"""
    new = {a.step_name for a in change.new_attempts if a.number == 1}
    new |= {w.step_name for w in change.new_waits}
    if not new:
        return
    change.new_attempts = [a for a in change.new_attempts if a.step_name not in new]
    change.new_waits = []
    change.new_steps = [
        replace(s, status=StepStatus.CANCELLED, ended=True) if s.name in new else s
        for s in change.new_steps
    ]
    change.events = [
        e
        for e in change.events
        if not (e.type in ("attempt_scheduled", "step_waiting") and e.step_name in new)
    ]
    statuses.update(dict.fromkeys(new, StepStatus.CANCELLED))


def _input_missing(step: Step, missing: list[dict[str, str]]) -> Failure:
    """Why a step whose input the context lacks fails without being dispatched."""
    names = ", ".join(
        m["input"] if m["input"] == m["path"] else f"{m['input']} (path '{m['path']}')"
        for m in missing
    )
    return Failure(
        reason=FailureReason.INPUT_MISSING,
        type="InputMissing",
        message=f"the run context has no value for the input of step '{step.name}': {names}",
        details={"missing": list(missing)},
        step=step.name,
        non_retryable=True,
    )


def _position(defn: WorkflowDef, name: str) -> int:
    """Where a step's row sorts in a run: declaration order, compensations after every step."""
    undone = compensated_step(name)
    if undone is not None:
        return len(defn.steps) + _position(defn, undone)
    return defn.steps.index(defn.step(name))
