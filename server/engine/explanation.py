"""The vocabulary of ExplainRun: blocker codes and actions, the facts read about a run
(`server.store.diagnosis`), the answer `server.engine.explain` decides from them, and how
times read in it. Pure: no grpc, no SQL."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from server.engine.model import (
    JSON,
    AttemptKind,
    AttemptStatus,
    Failure,
    RunStatus,
    StepStatus,
)


class BlockerCode(enum.StrEnum):
    RETRY_BACKOFF = "retry_backoff"
    WAITING_TIMER = "waiting_timer"
    WAITING_DEPENDENCIES = "waiting_dependencies"
    WAITING_APPROVAL = "waiting_approval"
    WAITING_EVENT = "waiting_event"
    PAUSED = "paused"
    DISPATCHED_NOT_STARTED = "dispatched_not_started"
    NO_WORKER_FOR_HANDLER = "no_worker_for_handler"
    WORKERS_BUSY = "workers_busy"
    HANDLER_DECLINED = "handler_declined"
    ATTEMPT_RUNNING = "attempt_running"
    CANCELLING = "cancelling"
    WAITING_CHILD = "waiting_child"
    COMPENSATING = "compensating"
    RUN_FAILED = "run_failed"
    RUN_CANCELLED = "run_cancelled"
    RUN_COMPLETED = "run_completed"


class ActionType(enum.StrEnum):
    CANCEL = "cancel"
    REPLAY = "replay"
    RESUME = "resume"
    APPROVE = "approve"
    REJECT = "reject"
    PUBLISH_EVENT = "publish_event"
    START_WORKER = "start_worker"


# --- the facts -------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepFacts:
    name: str
    status: StepStatus
    attempt_count: int
    created_at: datetime
    ended_at: datetime | None
    error: Failure | None


@dataclass(frozen=True)
class AttemptFacts:
    """The latest attempt of a live step."""

    step: str
    number: int
    status: AttemptStatus
    kind: AttemptKind
    queue: str
    handler: str
    worker_id: str | None
    created_at: datetime
    due_at: datetime
    kicked_at: datetime | None
    """When it was last published (None: a timer not due yet, or given back by a worker)."""
    kick_count: int
    started_at: datetime | None
    lease_expires_at: datetime | None
    deadline_at: datetime | None
    progress: dict[str, JSON] | None
    previous_error: Failure | None
    """The error of the attempt before it: why this one is a retry."""
    declined_at: datetime | None
    """When a worker that lacks its handler last gave it back (recorded at most once a second)."""
    declined_by: str
    """That worker."""


@dataclass(frozen=True)
class WaitFacts:
    """An open row of `waits`: a gate step waiting for a person, an event or a child run."""

    step: str
    kind: str
    event_name: str
    correlation_key: str
    deadline_at: datetime | None
    votes: tuple[dict[str, JSON], ...]
    created_at: datetime


@dataclass(frozen=True)
class WorkerFacts:
    id: str
    queues: frozenset[str]
    handlers: frozenset[str]
    slots_used: int
    slots_total: int
    live: bool
    last_seen_at: datetime


@dataclass(frozen=True)
class ChildFacts:
    run_id: str
    workflow: str
    status: RunStatus
    key: str
    """The key the parent's handler started it with (what a wait_child step waits on)."""
    parent_step: str
    """The step whose handler started it."""


@dataclass(frozen=True)
class RunFacts:
    id: str
    workflow_id: int
    status: RunStatus
    error: Failure | None
    created_at: datetime
    ended_at: datetime | None
    status_since: datetime
    """When the run entered its status (its first event since the last change of status)."""
    now: datetime
    """The database's clock when the facts were read."""
    steps: tuple[StepFacts, ...] = ()
    """Every step the run reached, in declaration order."""
    attempts: dict[str, AttemptFacts] = field(default_factory=dict)
    """The latest attempt of each live step, by step."""
    waits: dict[str, WaitFacts] = field(default_factory=dict)
    """Open waits, by step."""
    workers: tuple[WorkerFacts, ...] = ()
    """The workers serving the queues of the run's scheduled attempts, and those running its
    attempts (live or not)."""
    children: tuple[ChildFacts, ...] = ()
    cancel: dict[str, JSON] | None = None
    """What the latest cancel request said (actor, reason), for a cancelling or cancelled run."""


@dataclass(frozen=True)
class ExplainLimits:
    decline_window: timedelta
    """A decline this recent still explains an attempt that waits (declined attempts are
    published again after a backoff that doubles up to the dispatch timeout)."""


# --- the answer ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Blocker:
    code: BlockerCode
    step: str
    since: datetime | None
    until: datetime | None
    message: str
    evidence: dict[str, JSON] = field(default_factory=dict)


@dataclass(frozen=True)
class NextAction:
    action: ActionType
    allowed: bool
    step: str = ""
    reason: str = ""


@dataclass(frozen=True)
class Explanation:
    status: RunStatus
    summary: str
    blockers: tuple[Blocker, ...]
    next_actions: tuple[NextAction, ...]
    status_age: timedelta


# --- times in messages and evidence ---------------------------------------------


def iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


def at(at: datetime) -> str:
    return at.isoformat(timespec="milliseconds")


def ago(now: datetime, then: datetime) -> str:
    seconds = max((now - then).total_seconds(), 0.0)
    return f"{seconds:.1f} s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago"
