"""Read models: what commands and queries hand to the API layer."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime

from server.engine.model import (
    JSON,
    LIVE_STEP_STATUSES,
    AttemptStatus,
    Failure,
    RunStatus,
    ScheduleOrigin,
    StepStatus,
    WorkflowDef,
)


@dataclass(frozen=True)
class WorkflowVersion:
    id: int
    name: str
    version: int
    content_hash: str
    definition: WorkflowDef
    created_at: datetime


@dataclass(frozen=True)
class AttemptView:
    id: uuid.UUID
    number: int
    status: AttemptStatus
    worker_id: str | None
    output: JSON
    error: Failure | None
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    progress: dict[str, JSON] | None = None
    """The latest heartbeat details."""


@dataclass(frozen=True)
class StepView:
    name: str
    status: StepStatus
    output: JSON
    error: Failure | None
    created_at: datetime
    ended_at: datetime | None
    attempts: tuple[AttemptView, ...] = ()


@dataclass(frozen=True)
class ChildView:
    """A run a handler of another run started (its parent lists it)."""

    run_id: uuid.UUID
    workflow_name: str
    key: str
    """The key the handler gave (without the stored prefix)."""
    parent_step: str
    status: RunStatus


@dataclass(frozen=True)
class RunView:
    id: uuid.UUID
    workflow_name: str
    workflow_version: int
    trigger: str
    status: RunStatus
    payload: dict[str, JSON]
    context: dict[str, JSON]
    error: Failure | None
    idempotency_key: str | None
    source_run_id: uuid.UUID | None
    last_seq: int
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    updated_at: datetime
    parent_run_id: uuid.UUID | None = None
    parent_step: str | None = None
    steps: tuple[StepView, ...] = ()
    children: tuple[ChildView, ...] = ()
    """The runs its handlers started, oldest first (read with its steps only)."""
    live_steps: tuple[str, ...] | None = None
    """The current steps, when read without the steps (lists)."""
    schedule: ScheduleOrigin | None = None
    """The schedule that started it (or the run it replays)."""

    @property
    def current_steps(self) -> list[str]:
        if self.live_steps is not None:
            return list(self.live_steps)
        return [s.name for s in self.steps if s.status in LIVE_STEP_STATUSES]


@dataclass(frozen=True)
class EventView:
    run_id: uuid.UUID
    seq: int
    type: str
    run_status: RunStatus
    step_name: str | None
    attempt_number: int | None
    data: dict[str, JSON]
    created_at: datetime


@dataclass(frozen=True)
class Dispatch:
    """A published step task: what a worker needs to claim the attempt."""

    attempt_id: uuid.UUID
    token: str
    run_id: uuid.UUID
    step: str
    handler: str
    queue: str


@dataclass(frozen=True)
class StartDecision:
    accepted: bool
    refusal_reason: str = ""
    run_id: uuid.UUID | None = None
    workflow: str = ""
    step: str = ""
    handler: str = ""
    attempt_number: int = 0
    input: JSON = None
    idempotency_key: str = ""
    heartbeat_timeout_ms: int = 0
    attempt_timeout_ms: int | None = None


@dataclass(frozen=True)
class HandoffOffer:
    """A worker keeps the slot of the attempt it reports for the run's next attempt, if that
    one is due now on one of its queues, for one of its handlers; with `retries`, also for
    the reported attempt's retry, if that one is due soon (see `server.engine.handoff`)."""

    worker_id: str
    queues: frozenset[str]
    handlers: frozenset[str]
    retries: bool = False


@dataclass(frozen=True)
class Handoff:
    """An attempt claimed for the reporting worker in the same transaction as its result."""

    attempt_id: uuid.UUID
    token: str
    start: StartDecision


@dataclass(frozen=True)
class RetryHandoff:
    """A retry handed back to the worker whose attempt failed: not claimed; the worker claims
    it once `delay_ms` passed."""

    attempt_id: uuid.UUID
    token: str
    delay_ms: int


@dataclass(frozen=True)
class ResultDecision:
    accepted: bool
    refusal_reason: str = ""
    handoff: Handoff | None = None
    retry: RetryHandoff | None = None


@dataclass(frozen=True)
class HeartbeatResult:
    cancel: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class WorkerView:
    """A registered worker as ListWorkers shows it."""

    id: str
    host: str
    queues: tuple[str, ...]
    handlers: tuple[str, ...]
    slots_used: int
    """Attempts it runs now."""
    slots_total: int
    connected_at: datetime | None
    """When its attempt stream last opened."""
    last_seen_at: datetime
    live: bool
    gone_at: datetime | None
    """For a worker that is not live: when its stream closed, or it was last heard from."""
    labels: dict[str, str]
