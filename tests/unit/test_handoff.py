"""Which attempt a result hands to its worker (server.engine.handoff), and how the change
records it: pure, no I/O."""

from __future__ import annotations

import uuid

from server.engine.handoff import hand_off
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
