"""Why a run is where it is (ExplainRun). Pure: the facts read from Postgres in one statement
(`server.store.diagnosis`) and the run's definition in; typed blockers, a summary and the next
actions an operator could take out.

A blocker says what the run waits for (or, for a terminal run, how it ended), since when, until
when where known, and the facts it was decided from (its evidence). The facts are read together,
so a live worker, a running attempt and its heartbeat are seen as of one instant (`now`, the
database's clock).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from server.engine.model import (
    JSON,
    LIVE_STEP_STATUSES,
    AttemptKind,
    AttemptStatus,
    Failure,
    RunStatus,
    Step,
    StepKind,
    StepStatus,
    WorkflowDef,
    compensated_step,
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


def explain(run: RunFacts, defn: WorkflowDef, limits: ExplainLimits) -> Explanation:
    blockers = _blockers(run, defn, limits)
    return Explanation(
        status=run.status,
        summary=_summary(run, blockers),
        blockers=tuple(blockers),
        next_actions=tuple(_next_actions(run, defn, blockers)),
        status_age=max(run.now - run.status_since, timedelta(0)),
    )


def _blockers(run: RunFacts, defn: WorkflowDef, limits: ExplainLimits) -> list[Blocker]:
    if run.status is RunStatus.COMPLETED:
        return [Blocker(BlockerCode.RUN_COMPLETED, "", run.ended_at, None, "the run completed")]
    if run.status is RunStatus.FAILED:
        return [_run_failed(run)]
    if run.status is RunStatus.CANCELLED:
        return [_run_cancelled(run)]
    if run.status is RunStatus.CANCELLING:
        return _cancelling(run)
    blockers = [_compensating(run)] if run.status is RunStatus.COMPENSATING else []
    for step in run.steps:
        if step.status in LIVE_STEP_STATUSES:
            blockers += _step_blockers(run, _definition_step(defn, step.name), step, limits)
    if run.status is not RunStatus.COMPENSATING:
        blockers += _waiting_dependencies(run, defn)
    return blockers


def _definition_step(defn: WorkflowDef, name: str) -> Step:
    try:
        return defn.step(name)
    except KeyError:  # not in this version's definition: report it as the task it ran as
        return Step(name=name, kind=StepKind.TASK)


# --- terminal runs and run-wide states -------------------------------------------------------


def _run_failed(run: RunFacts) -> Blocker:
    error = run.error or Failure(reason="unknown", message="the run failed")
    number = error.attempt_number or next(
        (s.attempt_count for s in run.steps if s.name == error.step), 0
    )
    where = f" at step '{error.step}'" if error.step else ""
    attempt = f" (attempt {number})" if number else ""
    kind = f"{error.type}: " if error.type else ""
    return Blocker(
        BlockerCode.RUN_FAILED,
        error.step,
        run.ended_at,
        None,
        f"the run failed{where}{attempt}: {kind}{error.message}",
        {
            "reason": error.reason,
            "type": error.type,
            "message": error.message,
            "attempt_number": number,
            "non_retryable": error.non_retryable,
            **({"details": error.details} if error.details else {}),
        },
    )


def _run_cancelled(run: RunFacts) -> Blocker:
    cancel = run.cancel or {}
    actor, reason = str(cancel.get("actor") or ""), str(cancel.get("reason") or "")
    by = f" by {actor}" if actor else ""
    why = f": {reason}" if reason else ""
    return Blocker(
        BlockerCode.RUN_CANCELLED,
        "",
        run.ended_at,
        None,
        f"the run was cancelled{by}{why}",
        {"actor": actor, "reason": reason},
    )


def _cancelling(run: RunFacts) -> list[Blocker]:
    """A cancel waits for the running attempts to stop (or for their leases to end)."""
    running = [a for a in run.attempts.values() if a.status is AttemptStatus.RUNNING]
    if not running:
        return [
            Blocker(BlockerCode.CANCELLING, "", run.status_since, None, "the run is cancelling")
        ]
    return [
        Blocker(
            BlockerCode.CANCELLING,
            a.step,
            run.status_since,
            a.lease_expires_at,
            f"the run is cancelling: step '{a.step}' attempt {a.number} still runs on worker "
            f"'{a.worker_id}', told to stop; it ends when it stops or its lease ends"
            + (f" at {_at(a.lease_expires_at)}" if a.lease_expires_at else ""),
            {
                "worker_id": a.worker_id or "",
                "attempt_number": a.number,
                "lease_expires_at": _iso(a.lease_expires_at),
                **({"cancel_actor": run.cancel["actor"]} if run.cancel else {}),
            },
        )
        for a in running
    ]


def _compensating(run: RunFacts) -> Blocker:
    error = run.error
    compensations = {
        compensated: s.status.value
        for s in run.steps
        if (compensated := compensated_step(s.name)) is not None
    }
    at = f" at step '{error.step}'" if error and error.step else ""
    return Blocker(
        BlockerCode.COMPENSATING,
        error.step if error else "",
        run.status_since,
        None,
        f"the run failed{at} and undoes its completed steps (compensations) before it ends",
        {
            "error": error.to_json() if error else None,
            "compensations": compensations,
        },
    )


# --- one live step ---------------------------------------------------------------------------


def _step_blockers(
    run: RunFacts, step: Step, facts: StepFacts, limits: ExplainLimits
) -> list[Blocker]:
    attempt = run.attempts.get(step.name)
    wait = run.waits.get(step.name)
    if step.kind is StepKind.WAIT:
        due = attempt.due_at if attempt else None
        return [
            Blocker(
                BlockerCode.WAITING_TIMER,
                step.name,
                attempt.created_at if attempt else facts.created_at,
                due,
                f"step '{step.name}' waits" + (f" until {_at(due)}" if due else ""),
                {"wait_ms": step.wait_ms},
            )
        ]
    if step.kind.gate:
        return [_gate(run, step, facts, wait)]
    if attempt is None:
        return []
    if attempt.status is AttemptStatus.RUNNING:
        return [_running(run, attempt)]
    if attempt.status is AttemptStatus.SCHEDULED:
        return _scheduled(run, attempt, limits)
    return []


def _gate(run: RunFacts, step: Step, facts: StepFacts, wait: WaitFacts | None) -> Blocker:
    since = wait.created_at if wait else facts.created_at
    deadline = wait.deadline_at if wait else None
    by = f" (deadline {_at(deadline)}, then {step.on_deadline.value})" if deadline else ""
    timing: dict[str, JSON] = {"deadline": _iso(deadline), "on_deadline": step.on_deadline.value}
    if step.kind is StepKind.PAUSE:
        return Blocker(
            BlockerCode.PAUSED,
            step.name,
            since,
            deadline,
            f"step '{step.name}' pauses the run until ResumeRun",
            {},
        )
    if step.kind is StepKind.APPROVAL:
        votes = list(wait.votes) if wait else []
        actors = [str(v.get("actor", "")) for v in votes]
        return Blocker(
            BlockerCode.WAITING_APPROVAL,
            step.name,
            since,
            deadline,
            f"step '{step.name}' waits for approval: {len(votes)} of "
            f"{step.required_approvals} approvals{by}",
            {
                "approvals": len(votes),
                "required_approvals": step.required_approvals,
                "approved_by": actors,
                "votes": votes,
                **timing,
            },
        )
    if step.kind is StepKind.WAIT_EVENT:
        name = wait.event_name if wait and wait.event_name else step.event
        key = wait.correlation_key if wait else ""
        return Blocker(
            BlockerCode.WAITING_EVENT,
            step.name,
            since,
            deadline,
            f"step '{step.name}' waits for event '{name}' with correlation key '{key}'{by}",
            {"event": name, "correlation_key": key, **timing},
        )
    key = wait.correlation_key if wait else ""
    # The child was started by some step's handler with this key (unique within the run).
    child = next((c for c in run.children if key and c.key == key), None)
    what = f"child run {child.run_id} ({child.status.value})" if child else "its child run"
    return Blocker(
        BlockerCode.WAITING_CHILD,
        step.name,
        since,
        deadline,
        f"step '{step.name}' waits for {what} to end{by}",
        {
            "child_key": key,
            "child_run_id": child.run_id if child else "",
            "child_workflow": child.workflow if child else "",
            "child_status": child.status.value if child else "",
            **timing,
        },
    )


def _running(run: RunFacts, attempt: AttemptFacts) -> Blocker:
    worker = next((w for w in run.workers if w.id == attempt.worker_id), None)
    live = worker is not None and worker.live
    beat = worker.last_seen_at if worker else None
    if live:
        ago = f"last heard from {_ago(run.now, beat)}" if beat else "live"
        state = f"on worker '{attempt.worker_id}' ({ago})"
    else:
        state = (
            f"on worker '{attempt.worker_id}', which is gone: it fails as worker_lost when its "
            "lease ends"
            + (f" at {_at(attempt.lease_expires_at)}" if attempt.lease_expires_at else "")
        )
    return Blocker(
        BlockerCode.ATTEMPT_RUNNING,
        attempt.step,
        attempt.started_at,
        attempt.lease_expires_at,
        f"step '{attempt.step}' attempt {attempt.number} runs {state}",
        {
            "worker_id": attempt.worker_id or "",
            "worker_live": live,
            "attempt_number": attempt.number,
            "handler": attempt.handler,
            "queue": attempt.queue,
            "started": _iso(attempt.started_at),
            "last_heartbeat": _iso(beat),
            "lease_expires_at": _iso(attempt.lease_expires_at),
            "deadline": _iso(attempt.deadline_at),
            "progress": attempt.progress,
        },
    )


def _scheduled(run: RunFacts, attempt: AttemptFacts, limits: ExplainLimits) -> list[Blocker]:
    """A task attempt not claimed yet: in a backoff (a retry's, or after a decline), or due
    and published, waiting for a worker that can take it."""
    capable = [
        w
        for w in run.workers
        if w.live and attempt.queue in w.queues and attempt.handler in w.handlers
    ]
    declined = (
        attempt.declined_at is not None and run.now - attempt.declined_at <= limits.decline_window
    )
    no_worker = _no_worker(run, attempt) if not capable else None
    busy = _busy(attempt, capable) if capable else None
    if attempt.due_at > run.now:  # in a backoff: that is what the run waits for first
        first = _declined(attempt) if declined else _retry_backoff(attempt)
        return [first, *(b for b in (no_worker, busy) if b is not None)]
    if no_worker is not None:
        return [no_worker]
    if busy is not None:
        return [busy, *([_declined(attempt)] if declined else [])]
    if declined:
        return [_declined(attempt)]
    since = attempt.kicked_at or attempt.due_at
    free = [w.id for w in capable if w.slots_used < w.slots_total]
    return [
        Blocker(
            BlockerCode.DISPATCHED_NOT_STARTED,
            attempt.step,
            since,
            None,
            f"step '{attempt.step}' attempt {attempt.number} was published to queue "
            f"'{attempt.queue}' {_ago(run.now, since)} and no worker claimed it yet "
            f"({len(free)} live worker(s) with handler '{attempt.handler}' have free slots)",
            {
                **_where(attempt),
                "published": _iso(attempt.kicked_at),
                "publications": attempt.kick_count,
                "workers_with_free_slots": free,
            },
        )
    ]


def _retry_backoff(attempt: AttemptFacts) -> Blocker:
    error = attempt.previous_error
    cause = f" after {error.type or error.reason}: {error.message}" if error else ""
    return Blocker(
        BlockerCode.RETRY_BACKOFF,
        attempt.step,
        attempt.created_at,
        attempt.due_at,
        f"step '{attempt.step}' attempt {attempt.number} is retried at {_at(attempt.due_at)}"
        + cause,
        {**_where(attempt), "last_error": error.to_json() if error else None},
    )


def _declined(attempt: AttemptFacts) -> Blocker:
    by = f"worker '{attempt.declined_by}'" if attempt.declined_by else "a worker"
    return Blocker(
        BlockerCode.HANDLER_DECLINED,
        attempt.step,
        attempt.declined_at,
        attempt.due_at if attempt.kicked_at is None else None,
        f"step '{attempt.step}' attempt {attempt.number} was given back by {by}, which "
        f"consumes queue '{attempt.queue}' without handler '{attempt.handler}'",
        {
            **_where(attempt),
            "declined_by": attempt.declined_by,
            "declined": _iso(attempt.declined_at),
        },
    )


def _no_worker(run: RunFacts, attempt: AttemptFacts) -> Blocker:
    without = sorted(w.id for w in run.workers if w.live and attempt.queue in w.queues)
    others = f" (live workers on the queue without it: {', '.join(without)})" if without else ""
    return Blocker(
        BlockerCode.NO_WORKER_FOR_HANDLER,
        attempt.step,
        attempt.due_at,
        None,
        f"step '{attempt.step}' waits for a worker: no live worker serves handler "
        f"'{attempt.handler}' on queue '{attempt.queue}'{others}",
        {
            **_where(attempt),
            "workers_without_handler": without,
            **({"declined_by": attempt.declined_by} if attempt.declined_by else {}),
        },
    )


def _busy(attempt: AttemptFacts, capable: Sequence[WorkerFacts]) -> Blocker | None:
    used = sum(w.slots_used for w in capable)
    total = sum(w.slots_total for w in capable)
    if used < total:
        return None
    return Blocker(
        BlockerCode.WORKERS_BUSY,
        attempt.step,
        attempt.due_at,
        None,
        f"step '{attempt.step}' waits for a free slot: the {len(capable)} live worker(s) with "
        f"handler '{attempt.handler}' on queue '{attempt.queue}' run {used} of {total} attempts",
        {
            **_where(attempt),
            "workers": sorted(w.id for w in capable),
            "slots_used": used,
            "slots_total": total,
        },
    )


def _where(attempt: AttemptFacts) -> dict[str, JSON]:
    return {"attempt_number": attempt.number, "handler": attempt.handler, "queue": attempt.queue}


def _waiting_dependencies(run: RunFacts, defn: WorkflowDef) -> list[Blocker]:
    """Steps not reached yet (dependency mode) whose prerequisites are not all completed."""
    if not defn.uses_dependencies:
        return []
    reached = {s.name: s.status for s in run.steps}
    blockers = []
    for step in defn.steps:
        if step.name in reached or not step.after:
            continue
        remaining = [p for p in step.after if reached.get(p) is not StepStatus.COMPLETED]
        if not remaining:
            continue
        names = ", ".join(f"'{p}'" for p in remaining)
        blockers.append(
            Blocker(
                BlockerCode.WAITING_DEPENDENCIES,
                step.name,
                run.created_at,
                None,
                f"step '{step.name}' waits for its prerequisites {names}",
                {
                    "waiting_for": remaining,
                    "done": [p for p in step.after if p not in remaining],
                    "statuses": {p: reached[p].value for p in remaining if p in reached},
                },
            )
        )
    return blockers


# --- summary and next actions ----------------------------------------------------------------


def _summary(run: RunFacts, blockers: Sequence[Blocker]) -> str:
    if not blockers:
        return f"The run is {run.status.value} and waits for nothing the server knows of."
    first = blockers[0].message
    more = f" (and {len(blockers) - 1} more)" if len(blockers) > 1 else ""
    return f"{first[0].upper()}{first[1:]}{more}."


def _next_actions(
    run: RunFacts, defn: WorkflowDef, blockers: Sequence[Blocker]
) -> list[NextAction]:
    actions: list[NextAction] = []
    for b in blockers:
        if b.code is BlockerCode.PAUSED:
            actions.append(_gate_action(ActionType.RESUME, run, b.step))
        elif b.code is BlockerCode.WAITING_APPROVAL:
            actions.append(_gate_action(ActionType.APPROVE, run, b.step))
            actions.append(_gate_action(ActionType.REJECT, run, b.step))
        elif b.code is BlockerCode.WAITING_EVENT:
            actions.append(_gate_action(ActionType.PUBLISH_EVENT, run, b.step))
        elif b.code is BlockerCode.NO_WORKER_FOR_HANDLER:
            actions.append(NextAction(ActionType.START_WORKER, True, b.step))
    if run.status.terminal:
        actions.append(
            NextAction(
                ActionType.CANCEL,
                False,
                reason=f"the run is {run.status.value}: a terminal run cannot be cancelled",
            )
        )
    else:
        actions.append(NextAction(ActionType.CANCEL, True))
    irreversible = [
        s.name
        for s in run.steps
        if s.status is StepStatus.COMPLETED and _definition_step(defn, s.name).irreversible
    ]
    if irreversible:
        names = ", ".join(f"'{n}'" for n in irreversible)
        step = "step" if len(irreversible) == 1 else "steps"
        actions.append(
            NextAction(
                ActionType.REPLAY,
                False,
                reason=f"replay refused: the run completed the irreversible {step} {names} "
                "(allow_irreversible overrides)",
            )
        )
    else:
        actions.append(NextAction(ActionType.REPLAY, True))
    return actions


def _gate_action(action: ActionType, run: RunFacts, step: str) -> NextAction:
    if step in run.waits:
        return NextAction(action, True, step)
    return NextAction(action, False, step, f"step '{step}' has no open wait (it is resolving)")


# --- time ------------------------------------------------------------------------------------


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


def _at(at: datetime) -> str:
    return at.isoformat(timespec="milliseconds")


def _ago(now: datetime, then: datetime) -> str:
    seconds = max((now - then).total_seconds(), 0.0)
    return f"{seconds:.1f} s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago"
