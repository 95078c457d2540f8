"""ExplainRun's decisions, pure: facts about a run in, blockers, summary and next actions out.
The integration tests (tests/integration/test_explain.py) put real runs in these states."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from server.engine.explain import explain
from server.engine.explanation import (
    ActionType,
    AttemptFacts,
    BlockerCode,
    ChildFacts,
    ExplainLimits,
    Explanation,
    NextAction,
    RunFacts,
    StepFacts,
    WaitFacts,
    WorkerFacts,
)
from server.engine.model import (
    AttemptKind,
    AttemptStatus,
    DeadlineAction,
    Failure,
    RunStatus,
    Step,
    StepKind,
    StepStatus,
    Trigger,
    WorkflowDef,
    compensation_step,
)

NOW = datetime(2026, 12, 2, 8, 0, 0, tzinfo=UTC)
LIMITS = ExplainLimits(decline_window=timedelta(seconds=60))


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


def later(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


def task(name: str, *after: str, **options: Any) -> Step:
    return Step(
        name=name, kind=StepKind.TASK, handler=f"h.{name}", queue="q", after=after, **options
    )


def workflow(*steps: Step) -> WorkflowDef:
    return WorkflowDef(name="wf", triggers=(Trigger("manual"),), steps=steps)


ORDERS = workflow(task("reserve"), task("ship", irreversible=True))


def step(name: str, status: StepStatus, attempts: int = 1, **kw: Any) -> StepFacts:
    return StepFacts(
        name=name,
        status=status,
        attempt_count=attempts,
        created_at=kw.pop("created_at", ago(30)),
        ended_at=kw.pop("ended_at", None),
        error=kw.pop("error", None),
    )


def attempt(
    step_name: str, status: AttemptStatus = AttemptStatus.SCHEDULED, **kw: Any
) -> AttemptFacts:
    values: dict[str, Any] = {
        "step": step_name,
        "number": 1,
        "status": status,
        "kind": AttemptKind.TASK,
        "queue": "q",
        "handler": f"h.{step_name}",
        "worker_id": None,
        "created_at": ago(10),
        "due_at": ago(10),
        "kicked_at": ago(10),
        "kick_count": 1,
        "started_at": None,
        "lease_expires_at": None,
        "deadline_at": None,
        "progress": None,
        "previous_error": None,
        "declined_at": None,
        "declined_by": "",
    }
    values.update(kw)
    return AttemptFacts(**values)


def worker(
    worker_id: str, handlers: tuple[str, ...], used: int = 0, total: int = 2, **kw: Any
) -> WorkerFacts:
    return WorkerFacts(
        id=worker_id,
        queues=frozenset(kw.pop("queues", ("q",))),
        handlers=frozenset(handlers),
        slots_used=used,
        slots_total=total,
        live=kw.pop("live", True),
        last_seen_at=kw.pop("last_seen_at", ago(0.5)),
    )


def run(status: RunStatus, *steps: StepFacts, **kw: Any) -> RunFacts:
    return RunFacts(
        id="r1",
        workflow_id=1,
        status=status,
        error=kw.pop("error", None),
        created_at=ago(60),
        ended_at=kw.pop("ended_at", None),
        status_since=kw.pop("status_since", ago(20)),
        now=NOW,
        steps=steps,
        **kw,
    )


def codes(e: Explanation) -> list[BlockerCode]:
    return [b.code for b in e.blockers]


def action(e: Explanation, kind: ActionType) -> NextAction:
    return next(a for a in e.next_actions if a.action is kind)


# --- terminal runs ---------------------------------------------------------------------------


def test_a_failed_run_names_its_step_attempt_and_error() -> None:
    error = Failure(
        reason="handler_error",
        type="Timeout",
        message="carrier down",
        step="ship",
        attempt_number=3,
    )
    e = explain(
        run(
            RunStatus.FAILED,
            step("reserve", StepStatus.COMPLETED),
            step("ship", StepStatus.FAILED, attempts=3, error=error),
            error=error,
            ended_at=ago(5),
        ),
        ORDERS,
        LIMITS,
    )
    assert codes(e) == [BlockerCode.RUN_FAILED]
    failed = e.blockers[0]
    assert (failed.step, failed.since) == ("ship", ago(5))
    assert failed.evidence["attempt_number"] == 3
    assert (failed.evidence["reason"], failed.evidence["type"], failed.evidence["message"]) == (
        "handler_error",
        "Timeout",
        "carrier down",
    )
    assert e.summary == "The run failed at step 'ship' (attempt 3): Timeout: carrier down."
    cancel = action(e, ActionType.CANCEL)
    assert not cancel.allowed and "terminal" in cancel.reason
    assert action(e, ActionType.REPLAY).allowed  # the irreversible step did not complete


def test_a_failure_without_an_attempt_number_takes_the_steps_attempt_count() -> None:
    error = Failure(
        reason="no_matching_transition", message="no transition matched", step="reserve"
    )
    e = explain(
        run(RunStatus.FAILED, step("reserve", StepStatus.COMPLETED, attempts=2), error=error),
        ORDERS,
        LIMITS,
    )
    assert e.blockers[0].evidence["attempt_number"] == 2


def test_replay_is_refused_once_an_irreversible_step_completed() -> None:
    e = explain(
        run(
            RunStatus.COMPLETED,
            step("reserve", StepStatus.COMPLETED),
            step("ship", StepStatus.COMPLETED),
            ended_at=ago(1),
        ),
        ORDERS,
        LIMITS,
    )
    assert codes(e) == [BlockerCode.RUN_COMPLETED]
    replay = action(e, ActionType.REPLAY)
    assert not replay.allowed
    assert replay.reason == (
        "replay refused: the run completed the irreversible step 'ship' "
        "(allow_irreversible overrides)"
    )


def test_a_cancelled_run_says_who_cancelled_it() -> None:
    e = explain(
        run(
            RunStatus.CANCELLED,
            step("reserve", StepStatus.CANCELLED),
            cancel={"actor": "ops", "reason": "duplicate order"},
            ended_at=ago(2),
        ),
        ORDERS,
        LIMITS,
    )
    assert codes(e) == [BlockerCode.RUN_CANCELLED]
    assert e.blockers[0].evidence == {"actor": "ops", "reason": "duplicate order"}
    assert e.summary == "The run was cancelled by ops: duplicate order."


def test_cancelling_waits_for_the_running_attempt_until_its_lease() -> None:
    running = attempt(
        "reserve",
        AttemptStatus.RUNNING,
        worker_id="w1",
        started_at=ago(8),
        lease_expires_at=later(4),
    )
    e = explain(
        run(
            RunStatus.CANCELLING,
            step("reserve", StepStatus.RUNNING),
            attempts={"reserve": running},
            workers=(worker("w1", ("h.reserve",), used=1),),
            status_since=ago(3),
        ),
        ORDERS,
        LIMITS,
    )
    assert codes(e) == [BlockerCode.CANCELLING]
    b = e.blockers[0]
    assert (b.step, b.since, b.until, b.evidence["worker_id"]) == (
        "reserve",
        ago(3),
        later(4),
        "w1",
    )
    assert e.status_age == timedelta(seconds=3)
    assert action(e, ActionType.CANCEL).allowed


def test_compensating_lists_the_compensations_and_what_each_waits_for() -> None:
    defn = workflow(task("reserve", compensate="h.release"), task("ship"))
    error = Failure(reason="handler_error", type="Boom", message="no", step="ship")
    undo = compensation_step("reserve")
    e = explain(
        run(
            RunStatus.COMPENSATING,
            step("reserve", StepStatus.COMPLETED),
            step("ship", StepStatus.FAILED, error=error),
            step(undo, StepStatus.SCHEDULED),
            error=error,
            attempts={undo: attempt(undo, handler="h.release")},
        ),
        defn,
        LIMITS,
    )
    assert codes(e) == [BlockerCode.COMPENSATING, BlockerCode.NO_WORKER_FOR_HANDLER]
    assert e.blockers[0].evidence["compensations"] == {"reserve": "scheduled"}
    assert e.blockers[1].evidence["handler"] == "h.release"


# --- task attempts ---------------------------------------------------------------------------


def test_no_live_worker_has_the_handler_names_those_on_the_queue_without_it() -> None:
    facts = run(
        RunStatus.PENDING,
        step("reserve", StepStatus.SCHEDULED),
        attempts={"reserve": attempt("reserve")},
        workers=(
            worker("w-other", ("h.other",)),
            worker("w-dead", ("h.reserve",), live=False),
        ),
    )
    e = explain(facts, ORDERS, LIMITS)
    assert codes(e) == [BlockerCode.NO_WORKER_FOR_HANDLER]
    b = e.blockers[0]
    assert b.evidence["handler"] == "h.reserve" and b.evidence["queue"] == "q"
    assert b.evidence["workers_without_handler"] == ["w-other"]
    start = action(e, ActionType.START_WORKER)
    assert (start.allowed, start.step) == (True, "reserve")

    # Once a worker with the handler is live, the attempt just waits to be claimed.
    ready = replace(facts, workers=(*facts.workers, worker("w-new", ("h.reserve",))))
    e = explain(ready, ORDERS, LIMITS)
    assert codes(e) == [BlockerCode.DISPATCHED_NOT_STARTED]
    assert e.blockers[0].since == ago(10)
    assert e.blockers[0].evidence["workers_with_free_slots"] == ["w-new"]
    assert all(a.action is not ActionType.START_WORKER for a in e.next_actions)


def test_workers_busy_when_every_slot_of_the_capable_workers_is_taken() -> None:
    facts = run(
        RunStatus.PENDING,
        step("reserve", StepStatus.SCHEDULED),
        attempts={"reserve": attempt("reserve")},
        workers=(
            worker("w1", ("h.reserve",), used=2, total=2),
            worker("w2", ("h.reserve",), used=1, total=1),
        ),
    )
    e = explain(facts, ORDERS, LIMITS)
    assert codes(e) == [BlockerCode.WORKERS_BUSY]
    assert (e.blockers[0].evidence["slots_used"], e.blockers[0].evidence["slots_total"]) == (3, 3)


def test_a_declined_attempt_in_its_backoff() -> None:
    declined = attempt(
        "reserve", kicked_at=None, due_at=later(0.4), declined_at=ago(0.2), declined_by="w-old"
    )
    facts = run(
        RunStatus.PENDING,
        step("reserve", StepStatus.SCHEDULED),
        attempts={"reserve": declined},
        workers=(worker("w-old", ()), worker("w-new", ("h.reserve",))),
    )
    e = explain(facts, ORDERS, LIMITS)
    assert codes(e) == [BlockerCode.HANDLER_DECLINED]
    b = e.blockers[0]
    assert (b.since, b.until, b.evidence["declined_by"]) == (ago(0.2), later(0.4), "w-old")
    # Without any worker that has the handler, that is said too.
    alone = replace(facts, workers=(worker("w-old", ()),))
    assert codes(explain(alone, ORDERS, LIMITS)) == [
        BlockerCode.HANDLER_DECLINED,
        BlockerCode.NO_WORKER_FOR_HANDLER,
    ]
    # A decline long ago no longer explains anything.
    old = replace(declined, declined_at=ago(600), due_at=ago(1), kicked_at=ago(1))
    stale = replace(facts, attempts={"reserve": old})
    assert codes(explain(stale, ORDERS, LIMITS)) == [BlockerCode.DISPATCHED_NOT_STARTED]


def test_retry_backoff_until_due_with_the_last_error() -> None:
    error = Failure(reason="handler_error", type="Timeout", message="carrier down")
    retry = attempt("reserve", number=2, kicked_at=None, due_at=later(5), previous_error=error)
    facts = run(
        RunStatus.RETRYING,
        step("reserve", StepStatus.RETRYING, attempts=2),
        attempts={"reserve": retry},
        workers=(worker("w1", ("h.reserve",)),),
    )
    e = explain(facts, ORDERS, LIMITS)
    assert codes(e) == [BlockerCode.RETRY_BACKOFF]
    b = e.blockers[0]
    assert (b.step, b.until) == ("reserve", later(5))
    assert b.evidence["last_error"] == error.to_json()
    assert b.evidence["attempt_number"] == 2
    assert "Timeout: carrier down" in e.summary
    # After the backoff, the worker question comes second.
    nobody = replace(facts, workers=())
    assert codes(explain(nobody, ORDERS, LIMITS)) == [
        BlockerCode.RETRY_BACKOFF,
        BlockerCode.NO_WORKER_FOR_HANDLER,
    ]


def test_a_running_attempt_shows_its_worker_heartbeat_and_lease() -> None:
    running = attempt(
        "reserve",
        AttemptStatus.RUNNING,
        worker_id="w1",
        started_at=ago(4),
        lease_expires_at=later(9),
        progress={"done": 3},
    )
    facts = run(
        RunStatus.RUNNING,
        step("reserve", StepStatus.RUNNING),
        attempts={"reserve": running},
        workers=(worker("w1", ("h.reserve",), used=1, last_seen_at=ago(0.3)),),
    )
    e = explain(facts, ORDERS, LIMITS)
    assert codes(e) == [BlockerCode.ATTEMPT_RUNNING]
    b = e.blockers[0]
    assert (b.since, b.until) == (ago(4), later(9))
    assert b.evidence["worker_id"] == "w1" and b.evidence["worker_live"] is True
    assert b.evidence["last_heartbeat"] == ago(0.3).isoformat()
    assert b.evidence["progress"] == {"done": 3}
    # Its worker gone, the lease is what ends it.
    gone = replace(facts, workers=(worker("w1", ("h.reserve",), live=False),))
    b = explain(gone, ORDERS, LIMITS).blockers[0]
    assert b.evidence["worker_live"] is False and "worker_lost" in b.message


def test_wait_steps_and_dependencies() -> None:
    defn = workflow(
        task("a"),
        Step(name="pause", kind=StepKind.WAIT, wait_ms=5000, after=("a",)),
        task("b"),
        task("c", "pause", "b"),
    )
    timer = attempt(
        "pause", kind=AttemptKind.WAIT, kicked_at=None, due_at=later(3), handler="", queue=""
    )
    running_b = attempt("b", AttemptStatus.RUNNING, worker_id="w1", started_at=ago(1))
    e = explain(
        run(
            RunStatus.RUNNING,
            step("a", StepStatus.COMPLETED),
            step("pause", StepStatus.WAITING),
            step("b", StepStatus.RUNNING),
            attempts={"pause": timer, "b": running_b},
            workers=(worker("w1", ("h.b",), used=1),),
        ),
        defn,
        LIMITS,
    )
    assert codes(e) == [
        BlockerCode.WAITING_TIMER,
        BlockerCode.ATTEMPT_RUNNING,
        BlockerCode.WAITING_DEPENDENCIES,
    ]
    assert e.blockers[0].until == later(3)
    deps = e.blockers[2]
    assert deps.step == "c"
    assert deps.evidence["waiting_for"] == ["pause", "b"]
    assert deps.evidence["statuses"] == {"pause": "waiting", "b": "running"}


# --- gates -----------------------------------------------------------------------------------


GATES = workflow(
    task("prepare"),
    Step(
        name="sign_off",
        kind=StepKind.APPROVAL,
        required_approvals=2,
        deadline_ms=3_600_000,
        on_deadline=DeadlineAction.FAIL,
    ),
    Step(
        name="settled", kind=StepKind.WAIT_EVENT, event="payment.settled", correlation_key="{order}"
    ),
    Step(name="hold", kind=StepKind.PAUSE),
    Step(name="child", kind=StepKind.WAIT_CHILD, correlation_key="{order}-child"),
)


def wait(step_name: str, kind: str, **kw: Any) -> WaitFacts:
    return WaitFacts(
        step=step_name,
        kind=kind,
        event_name=kw.pop("event_name", ""),
        correlation_key=kw.pop("correlation_key", ""),
        deadline_at=kw.pop("deadline_at", None),
        votes=kw.pop("votes", ()),
        created_at=ago(40),
    )


def test_an_approval_shows_its_votes_and_deadline() -> None:
    vote = {"actor": "alice", "comment": "fine", "at": ago(10).isoformat(), "payload": {}}
    e = explain(
        run(
            RunStatus.PAUSED,
            step("prepare", StepStatus.COMPLETED),
            step("sign_off", StepStatus.PAUSED),
            waits={
                "sign_off": wait("sign_off", "approval", deadline_at=later(3000), votes=(vote,))
            },
        ),
        GATES,
        LIMITS,
    )
    assert codes(e) == [BlockerCode.WAITING_APPROVAL]
    b = e.blockers[0]
    assert (b.since, b.until) == (ago(40), later(3000))
    assert b.evidence["approvals"] == 1 and b.evidence["required_approvals"] == 2
    assert b.evidence["approved_by"] == ["alice"] and b.evidence["on_deadline"] == "fail"
    assert "1 of 2 approvals" in e.summary
    for kind in (ActionType.APPROVE, ActionType.REJECT):
        assert action(e, kind) == NextAction(kind, True, "sign_off")
    assert all(a.action is not ActionType.RESUME for a in e.next_actions)


def test_an_event_wait_names_the_event_and_its_correlation_key() -> None:
    e = explain(
        run(
            RunStatus.WAITING,
            step("settled", StepStatus.WAITING),
            waits={
                "settled": wait(
                    "settled", "event", event_name="payment.settled", correlation_key="order:42"
                )
            },
        ),
        GATES,
        LIMITS,
    )
    assert codes(e) == [BlockerCode.WAITING_EVENT]
    b = e.blockers[0]
    assert (b.evidence["event"], b.evidence["correlation_key"], b.until) == (
        "payment.settled",
        "order:42",
        None,
    )
    assert action(e, ActionType.PUBLISH_EVENT) == NextAction(
        ActionType.PUBLISH_EVENT, True, "settled"
    )


def test_a_pause_can_be_resumed_while_its_wait_is_open() -> None:
    paused = run(
        RunStatus.PAUSED,
        step("hold", StepStatus.PAUSED),
        waits={"hold": wait("hold", "pause")},
    )
    e = explain(paused, GATES, LIMITS)
    assert codes(e) == [BlockerCode.PAUSED]
    assert action(e, ActionType.RESUME) == NextAction(ActionType.RESUME, True, "hold")
    resolving = explain(replace(paused, waits={}), GATES, LIMITS)
    resume = action(resolving, ActionType.RESUME)
    assert not resume.allowed and "no open wait" in resume.reason


def test_a_child_wait_names_the_child_run() -> None:
    e = explain(
        run(
            RunStatus.WAITING,
            step("child", StepStatus.WAITING),
            waits={
                "child": wait("child", "child", correlation_key="42-child", deadline_at=later(60))
            },
            children=(
                ChildFacts("c0", "sub", RunStatus.COMPLETED, "41-child", "spawn"),
                ChildFacts("c1", "sub", RunStatus.RUNNING, "42-child", "spawn"),
            ),
        ),
        GATES,
        LIMITS,
    )
    assert codes(e) == [BlockerCode.WAITING_CHILD]
    b = e.blockers[0]
    assert (b.evidence["child_run_id"], b.evidence["child_status"], b.until) == (
        "c1",
        "running",
        later(60),
    )


@pytest.mark.parametrize("status", [RunStatus.PENDING, RunStatus.RUNNING])
def test_a_run_with_nothing_live_says_so(status: RunStatus) -> None:
    e = explain(run(status, step("reserve", StepStatus.COMPLETED)), ORDERS, LIMITS)
    assert e.blockers == () and status.value in e.summary
