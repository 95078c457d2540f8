"""Handoff: the answer to a worker's result hands it the run's next attempt.

A worker that reports a result may keep that attempt's slot for what follows (`HandoffOffer`).
When the decision schedules a first attempt due now, on a queue the worker consumes and for a
handler it runs, that attempt is written already claimed for the worker (running, under its
lease, with its attempt_started event) in the same transaction as the result, and the answer
carries it. The step then costs one transaction and no broker round trip; everything else
(fencing, leases, deadlines, cancellation) is as for a claimed attempt. Retries are never
handed off, so that another worker gets the chance to run them; nor are delayed attempts,
which are timers."""

from __future__ import annotations

import uuid
from dataclasses import replace

from server.engine.model import AttemptKind, StepStatus
from server.engine.views import HandoffOffer
from server.store.changes import NewAttempt, NewEvent, RunChange


def hand_off(change: RunChange, offer: HandoffOffer, from_attempt: uuid.UUID) -> NewAttempt | None:
    """Claims in `change`, for the offering worker, the first new attempt it can take, and
    returns it; None when there is none."""
    for i, attempt in enumerate(change.new_attempts):
        if (
            attempt.kind == AttemptKind.TASK
            and attempt.delay_ms == 0
            and attempt.number == 1
            and attempt.queue in offer.queues
            and attempt.handler in offer.handlers
        ):
            handed = replace(attempt, worker_id=offer.worker_id, handoff_from=str(from_attempt))
            change.new_attempts[i] = handed
            change.new_steps = [
                replace(step, status=StepStatus.RUNNING) if step.name == attempt.step_name else step
                for step in change.new_steps
            ]
            scheduled = next(
                k
                for k, event in enumerate(change.events)
                if event.type == "attempt_scheduled" and event.step_name == attempt.step_name
            )
            change.events.insert(
                scheduled + 1,
                NewEvent(
                    "attempt_started",
                    attempt.step_name,
                    attempt.number,
                    {"worker_id": offer.worker_id, "handoff": True},
                ),
            )
            return handed
    return None
