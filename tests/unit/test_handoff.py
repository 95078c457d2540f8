"""Which attempt a result hands to its worker (server.engine.handoff), and how the change
records it: pure, no I/O."""

from __future__ import annotations

import uuid

from server.engine.handoff import RETRY_HANDOFF_MAX_DELAY_MS, hand_off
from server.engine.model import AttemptKind, StepStatus
from server.engine.views import HandoffOffer
from server.store.changes import NewAttempt, NewEvent, NewStep, RunChange

OFFER = HandoffOffer("w1", frozenset({"default"}), frozenset({"h.ship", "h.email"}))
FROM = uuid.uuid4()


def attempt(step: str, handler: str, **fields: object) -> NewAttempt:
    values: dict[str, object] = {
        "id": uuid.uuid4(),
        "step_name": step,
        "number": 1,
        "token": "t",
        "queue": "default",
        "handler": handler,
        "heartbeat_timeout_ms": 10_000,
    }
    values.update(fields)
    return NewAttempt(**values)  # type: ignore[arg-type]


def change_with(*attempts: NewAttempt) -> RunChange:
    change = RunChange(uuid.uuid4(), events=[NewEvent("step_completed", "reserve", 1)])
    for a in attempts:
        if a.number == 1:
            change.new_steps.append(NewStep(a.step_name, 1, StepStatus.SCHEDULED))
        change.new_attempts.append(a)
        change.events.append(NewEvent("attempt_scheduled", a.step_name, a.number))
    change.events.append(NewEvent("transition", "reserve"))
    return change


def test_the_first_attempt_due_now_is_claimed_for_the_worker() -> None:
    change = change_with(attempt("ship", "h.ship"), attempt("email", "h.email"))
    handed = hand_off(change, OFFER, FROM)
    assert handed is not None and handed.step_name == "ship"
    assert (handed.worker_id, handed.handoff_from) == ("w1", str(FROM))
    assert [a.worker_id for a in change.new_attempts] == ["w1", None]
    assert [s.status for s in change.new_steps] == [StepStatus.RUNNING, StepStatus.SCHEDULED]
    types = [(e.type, e.step_name) for e in change.events]
    assert types == [
        ("step_completed", "reserve"),
        ("attempt_scheduled", "ship"),
        ("attempt_started", "ship"),
        ("attempt_scheduled", "email"),
        ("transition", "reserve"),
    ]
    assert change.events[2].data == {"worker_id": "w1", "handoff": True}


def test_retries_delays_waits_and_what_the_worker_cannot_run_stay_with_the_broker() -> None:
    ineligible = [
        attempt("ship", "h.ship", number=2),
        attempt("ship", "h.ship", delay_ms=10),
        attempt("pause", "", kind=AttemptKind.WAIT),
        attempt("ship", "h.ship", queue="gpu"),
        attempt("bill", "h.bill"),
    ]
    for a in ineligible:
        change = change_with(a)
        before = (list(change.new_attempts), list(change.new_steps), list(change.events))
        assert hand_off(change, OFFER, FROM) is None
        assert (change.new_attempts, change.new_steps, change.events) == before
    assert hand_off(change_with(), OFFER, FROM) is None


RETRIES = HandoffOffer(OFFER.worker_id, OFFER.queues, OFFER.handlers, retries=True)


def test_a_first_retry_due_soon_is_handed_back_unclaimed() -> None:
    for delay_ms in (0, 10, RETRY_HANDOFF_MAX_DELAY_MS):
        change = change_with(attempt("ship", "h.ship", number=2, delay_ms=delay_ms))
        handed = hand_off(change, RETRIES, FROM)
        assert handed is not None and handed.number == 2
        # Not claimed: the worker claims it when due; but dispatched, so never published.
        assert (handed.worker_id, handed.handoff_from, handed.delay_ms) == (
            None,
            str(FROM),
            delay_ms,
        )
        assert handed.handed_over and change.new_attempts == [handed]
        assert [e.type for e in change.events] == [
            "step_completed",
            "attempt_scheduled",
            "transition",
        ]
        assert change.events[1].data == {"held_by": "w1"}


def test_later_retries_long_backoffs_and_unoffered_retries_stay_with_the_broker() -> None:
    cases = [
        (RETRIES, attempt("ship", "h.ship", number=3)),
        (RETRIES, attempt("ship", "h.ship", number=2, delay_ms=RETRY_HANDOFF_MAX_DELAY_MS + 1)),
        (RETRIES, attempt("ship", "h.ship", number=2, queue="gpu")),
        (RETRIES, attempt("bill", "h.bill", number=2)),
        (OFFER, attempt("ship", "h.ship", number=2)),
    ]
    for offer, a in cases:
        change = change_with(a)
        before = (list(change.new_attempts), list(change.events))
        assert hand_off(change, offer, FROM) is None
        assert (change.new_attempts, change.events) == before
        assert not change.new_attempts[0].handed_over
