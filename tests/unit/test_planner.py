"""The planner: what a run does after a step completes or fails for good."""

from __future__ import annotations

from server.engine import planner
from server.engine.model import (
    COMPLETE,
    Condition,
    Failure,
    Operator,
    Outcome,
    Step,
    StepKind,
    StepStatus,
    Transition,
    Trigger,
    WorkflowDef,
)


def task(name: str, *after: str) -> Step:
    return Step(name=name, kind=StepKind.TASK, handler=f"h.{name}", after=after)


def flow(*transitions: Transition, steps: tuple[Step, ...] | None = None) -> WorkflowDef:
    return WorkflowDef(
        name="wf",
        triggers=(Trigger("manual"),),
        steps=steps or (task("a"), task("b"), task("c")),
        transitions=transitions,
    )


def test_entry_is_first_step_with_transitions() -> None:
    assert planner.entry_steps(flow(Transition("a", Outcome.OK, "b"))) == ("a",)


def test_conditional_transitions_first_then_unconditional() -> None:
    wf = flow(
        Transition("a", Outcome.OK, "c"),
        Transition("a", Outcome.OK, "b", Condition("x", Operator.GREATER_THAN, 10)),
    )
    big = planner.after_success(wf, "a", {"x": 11}, {"a": StepStatus.COMPLETED})
    small = planner.after_success(wf, "a", {"x": 3}, {"a": StepStatus.COMPLETED})
    assert big.schedule == ("b",) and big.transitions == (("a", "b"),)
    assert small.schedule == ("c",)


def test_no_match_on_ok_fails_with_reason() -> None:
    wf = flow(Transition("a", Outcome.OK, "b", Condition("x", Operator.EQUALS, 1)))
    plan = planner.after_success(wf, "a", {"x": 2}, {"a": StepStatus.COMPLETED})
    assert plan.failure is not None
    assert plan.failure.reason == "no_matching_transition"
    assert plan.failure.step == "a"
    assert not plan.schedule and not plan.complete


def test_a_step_without_ok_transitions_ends_the_run() -> None:
    wf = flow(Transition("a", Outcome.OK, "b"), Transition("b", Outcome.ERROR, "c"))
    assert planner.after_success(wf, "b", {}, {"b": StepStatus.COMPLETED}).complete


def test_complete_ends_the_run() -> None:
    plan = planner.after_success(
        flow(Transition("a", Outcome.OK, COMPLETE)), "a", {}, {"a": StepStatus.COMPLETED}
    )
    assert plan.complete and plan.transitions == (("a", COMPLETE),)


def test_failure_follows_error_route_or_fails_the_run() -> None:
    error = Failure(reason="handler_error", message="boom", step="a")
    routed = flow(Transition("a", Outcome.ERROR, "c"))
    assert planner.after_failure(routed, "a", error, {}).schedule == ("c",)
    plain = flow(Transition("a", Outcome.OK, "b"))
    assert planner.after_failure(plain, "a", error, {}).failure == error


def test_dependencies_run_as_soon_as_own_prerequisites_completed() -> None:
    wf = flow(steps=(task("a"), task("b", "a"), task("c", "a"), task("d", "b", "c")))
    assert planner.entry_steps(wf) == ("a",)
    after_a = planner.after_success(wf, "a", {}, {"a": StepStatus.COMPLETED})
    assert after_a.schedule == ("b", "c")
    after_b = planner.after_success(
        wf, "b", {}, {"a": StepStatus.COMPLETED, "b": StepStatus.COMPLETED, "c": StepStatus.RUNNING}
    )
    assert after_b.schedule == () and not after_b.complete
    after_c = planner.after_success(
        wf,
        "c",
        {},
        {"a": StepStatus.COMPLETED, "b": StepStatus.COMPLETED, "c": StepStatus.COMPLETED},
    )
    assert after_c.schedule == ("d",)
    done = {n: StepStatus.COMPLETED for n in "abcd"}
    assert planner.after_success(wf, "d", {}, done).complete


def test_compensations_run_newest_first_skipping_irreversible_and_started() -> None:
    wf = WorkflowDef(
        name="wf",
        triggers=(Trigger("manual"),),
        steps=(
            Step(name="a", kind=StepKind.TASK, handler="h.a", compensate="h.undo_a"),
            Step(name="b", kind=StepKind.TASK, handler="h.b"),
            Step(name="c", kind=StepKind.TASK, handler="h.c", compensate="h.undo_c"),
            Step(name="d", kind=StepKind.TASK, handler="h.d", compensate="h.x", irreversible=True),
            Step(name="e", kind=StepKind.TASK, handler="h.e", compensate="h.undo_e"),
        ),
    )
    # completion order a, c, b, d, e: e first, then c, then a; b has none, d is irreversible
    assert planner.compensations(wf, ["a", "c", "b", "d", "e"], ()) == ("e", "c", "a")
    assert planner.compensations(wf, ["a", "c", "b", "d", "e"], {"e"}) == ("c", "a")
    assert planner.compensations(wf, ["a", "c:compensate"], ()) == ("a",)
    compensation = wf.step("c:compensate")
    assert (compensation.handler, compensation.kind) == ("h.undo_c", StepKind.TASK)
