"""ExplainRun's blockers of a task step's latest attempt: running on a worker, or not claimed
yet (in a backoff, or due and waiting for a worker that can take it). Pure."""

from __future__ import annotations

from collections.abc import Sequence

from server.engine.explanation import (
    AttemptFacts,
    Blocker,
    BlockerCode,
    ExplainLimits,
    RunFacts,
    WorkerFacts,
    ago,
    at,
    iso,
)
from server.engine.model import JSON


def running(run: RunFacts, attempt: AttemptFacts) -> Blocker:
    worker = next((w for w in run.workers if w.id == attempt.worker_id), None)
    live = worker is not None and worker.live
    beat = worker.last_seen_at if worker else None
    if live:
        heard = f"last heard from {ago(run.now, beat)}" if beat else "live"
        state = f"on worker '{attempt.worker_id}' ({heard})"
    else:
        state = (
            f"on worker '{attempt.worker_id}', which is gone: it fails as worker_lost when its "
            "lease ends"
            + (f" at {at(attempt.lease_expires_at)}" if attempt.lease_expires_at else "")
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
            "started": iso(attempt.started_at),
            "last_heartbeat": iso(beat),
            "lease_expires_at": iso(attempt.lease_expires_at),
            "deadline": iso(attempt.deadline_at),
            "progress": attempt.progress,
        },
    )


def scheduled(run: RunFacts, attempt: AttemptFacts, limits: ExplainLimits) -> list[Blocker]:
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
            f"'{attempt.queue}' {ago(run.now, since)} and no worker claimed it yet "
            f"({len(free)} live worker(s) with handler '{attempt.handler}' have free slots)",
            {
                **_where(attempt),
                "published": iso(attempt.kicked_at),
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
        f"step '{attempt.step}' attempt {attempt.number} is retried at {at(attempt.due_at)}"
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
            "declined": iso(attempt.declined_at),
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
