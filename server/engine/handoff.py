"""Handoff: the answer to a worker's result hands it the run's next attempt.

A worker that reports a result may keep that attempt's slot for what follows (`HandoffOffer`).
When the decision schedules a first attempt due now, on a queue the worker consumes and for a
handler it runs, that attempt is written already claimed for the worker (running, under its
lease, with its attempt_started event) in the same transaction as the result, and the answer
carries it. The step then costs one transaction and no broker round trip; everything else
(fencing, leases, deadlines, cancellation) is as for a claimed attempt.

A failed first attempt's retry due within `RETRY_HANDOFF_MAX_DELAY_MS` is handed back too,
when the worker offers it (`HandoffOffer.retries`), but not claimed: it stays a scheduled
attempt, marked as dispatched, and the worker claims it like a delivered task once its
backoff passed. So its start and its backoff are recorded as for any retry, and a worker that
dies meanwhile costs no attempt: the reconciler publishes the retry after the dispatch
timeout. Only the first retry comes back, so that a later one may go to another worker. Other
delayed attempts and waits are timers."""

from __future__ import annotations

import uuid
from dataclasses import replace

from server.engine.model import AttemptKind, StepStatus
from server.engine.views import HandoffOffer
from server.store.changes import NewAttempt, NewEvent, RunChange

RETRY_HANDOFF_MAX_DELAY_MS = 100
"""The longest backoff a worker waits out in the slot it keeps for the retry."""


def hand_off(change: RunChange, offer: HandoffOffer, from_attempt: uuid.UUID) -> NewAttempt | None:
    """Hands over in `change`, to the offering worker, the first new attempt it can take
    (claimed for it, or a retry handed back), and returns it; None when there is none."""
    for i, attempt in enumerate(change.new_attempts):
        if (
            attempt.kind != AttemptKind.TASK
            or attempt.queue not in offer.queues
            or attempt.handler not in offer.handlers
        ):
            continue
        if attempt.number == 1 and attempt.delay_ms == 0:
            handed = replace(attempt, worker_id=offer.worker_id, handoff_from=str(from_attempt))
            change.new_attempts[i] = handed
            _record_start(change, handed, offer.worker_id)
            return handed
        if offer.retries and attempt.number == 2 and attempt.delay_ms <= RETRY_HANDOFF_MAX_DELAY_MS:
            handed = replace(attempt, handoff_from=str(from_attempt))
            change.new_attempts[i] = handed
            change.events = [
                replace(event, data={**event.data, "held_by": offer.worker_id})
                if event.type == "attempt_scheduled" and event.step_name == handed.step_name
                else event
                for event in change.events
            ]
            return handed
    return None


def _record_start(change: RunChange, handed: NewAttempt, worker_id: str) -> None:
    """The step of an attempt claimed in the change runs, and its attempt_started event
    follows its attempt_scheduled one."""
    change.new_steps = [
        replace(step, status=StepStatus.RUNNING) if step.name == handed.step_name else step
        for step in change.new_steps
    ]
    scheduled = next(
        k
        for k, event in enumerate(change.events)
        if event.type == "attempt_scheduled" and event.step_name == handed.step_name
    )
    change.events.insert(
        scheduled + 1,
        NewEvent(
            "attempt_started",
            handed.step_name,
            handed.number,
            {"worker_id": worker_id, "handoff": True},
        ),
    )
