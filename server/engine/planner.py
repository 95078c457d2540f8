"""Decides what a run does next. Pure: a definition, an outcome and the run context in, a plan
out. Commands turn plans into rows."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from server.engine.context import choose_transition
from server.engine.model import (
    COMPLETE,
    JSON,
    Failure,
    FailureReason,
    Outcome,
    StepStatus,
    WorkflowDef,
)


@dataclass(frozen=True)
class Plan:
    schedule: tuple[str, ...] = ()
    """Steps to schedule now."""
    complete: bool = False
    """The run reached "complete"."""
    failure: Failure | None = None
    """The run fails with this error."""
    transitions: tuple[tuple[str, str], ...] = ()
    """(from step, to) pairs taken, for the event log."""


def entry_steps(defn: WorkflowDef) -> tuple[str, ...]:
    """The first declared step with transitions; every step without prerequisites otherwise."""
    if defn.uses_dependencies:
        return tuple(s.name for s in defn.steps if not s.after)
    return (defn.steps[0].name,)


def after_success(
    defn: WorkflowDef,
    step: str,
    context: Mapping[str, JSON],
    statuses: Mapping[str, StepStatus],
) -> Plan:
    """What follows a completed step. `statuses` holds every step the run has reached, this one
    included (as completed)."""
    if defn.uses_dependencies:
        return _ready_steps(defn, statuses)
    if not any(t.from_step == step and t.on == Outcome.OK for t in defn.transitions):
        return Plan(complete=True)  # a step with no way on is an end of the workflow
    transition = choose_transition(defn.transitions, step, Outcome.OK, context)
    if transition is None:
        return Plan(
            failure=Failure(
                reason=FailureReason.NO_MATCHING_TRANSITION,
                message=f"no transition from step '{step}' matched on ok",
                step=step,
            )
        )
    return _follow(step, transition.to)


def after_failure(
    defn: WorkflowDef,
    step: str,
    failure: Failure,
    context: Mapping[str, JSON],
) -> Plan:
    """What follows a step that failed for good: its error route, or the run fails."""
    if not defn.uses_dependencies:
        transition = choose_transition(defn.transitions, step, Outcome.ERROR, context)
        if transition is not None:
            return _follow(step, transition.to)
    return Plan(failure=failure)


def _follow(step: str, to: str) -> Plan:
    if to == COMPLETE:
        return Plan(complete=True, transitions=((step, to),))
    return Plan(schedule=(to,), transitions=((step, to),))


def _ready_steps(defn: WorkflowDef, statuses: Mapping[str, StepStatus]) -> Plan:
    done = {name for name, status in statuses.items() if status == StepStatus.COMPLETED}
    if len(done) == len(defn.steps):
        return Plan(complete=True)
    ready = tuple(s.name for s in defn.steps if s.name not in statuses and set(s.after) <= done)
    return Plan(schedule=ready)


def compensations(
    defn: WorkflowDef, completed: Sequence[str], started: Collection[str]
) -> tuple[str, ...]:
    """The steps still to compensate after a failure, in the order to compensate them: the
    completed steps (`completed`, in completion order) that declare a compensation and are not
    irreversible, newest first, minus those whose compensation already `started`."""
    steps = {s.name: s for s in defn.steps}
    return tuple(
        name
        for name in reversed(completed)
        if name in steps
        and steps[name].compensate
        and not steps[name].irreversible
        and name not in started
    )
