"""What the engine's commands share: the database, publishing and wake-ups after commit, the
definition cache, and turning a plan into the rows of a `RunChange`."""

from __future__ import annotations

import secrets
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import structlog

from server.engine import planner
from server.engine.errors import ResourceExhausted
from server.engine.model import (
    JSON,
    RunStatus,
    StepStatus,
    WorkflowDef,
)
from server.engine.views import (
    Dispatch,
    WorkflowVersion,
)
from server.store import attempts, workflows
from server.store.changes import NewAttempt, NewEvent, NewStep, RunChange
from server.store.db import Connection, Database, dumps

log = structlog.get_logger("squidmesh.engine")

Publish = Callable[[list[Dispatch]], Awaitable[None]]


class Wakeups(Protocol):
    """Tells watchers and timer loops (of every replica) that something committed."""

    def run_changed(self, run_id: str) -> None: ...

    def timers_changed(self) -> None: ...


@dataclass(frozen=True)
class EngineConfig:
    heartbeat_timeout_ms: int = 10_000
    max_payload_bytes: int = 1_048_576


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
        # Attempts this process claimed, as the claim saw their run (see _complete_as_claimed).
        self._claims: OrderedDict[uuid.UUID, attempts.Claimed] = OrderedDict()

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
