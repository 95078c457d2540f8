"""Why a run is where it is (ExplainRun). Pure: the facts read from Postgres in one statement
(`server.store.diagnosis`) and the run's definition in; typed blockers, a summary and the next
actions an operator could take out.

A blocker says what the run waits for (or, for a terminal run, how it ended), since when, until
when where known, and the facts it was decided from (its evidence). The facts are read together,
so a live worker, a running attempt and its heartbeat are seen as of one instant (`now`, the
database's clock).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from server.engine.explain_attempts import running, scheduled
from server.engine.explanation import (
    ActionType,
    Blocker,
    BlockerCode,
    ExplainLimits,
    Explanation,
    NextAction,
    RunFacts,
    StepFacts,
    WaitFacts,
    at,
    iso,
)
from server.engine.model import (
    JSON,
    LIVE_STEP_STATUSES,
    AttemptStatus,
    Failure,
    RunStatus,
    Step,
    StepKind,
    StepStatus,
    WorkflowDef,
    compensated_step,
)


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
            + (f" at {at(a.lease_expires_at)}" if a.lease_expires_at else ""),
            {
                "worker_id": a.worker_id or "",
                "attempt_number": a.number,
                "lease_expires_at": iso(a.lease_expires_at),
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
                f"step '{step.name}' waits" + (f" until {at(due)}" if due else ""),
                {"wait_ms": step.wait_ms},
            )
        ]
    if step.kind.gate:
        return [_gate(run, step, facts, wait)]
    if attempt is None:
        return []
    if attempt.status is AttemptStatus.RUNNING:
        return [running(run, attempt)]
    if attempt.status is AttemptStatus.SCHEDULED:
        return scheduled(run, attempt, limits)
    return []


def _gate(run: RunFacts, step: Step, facts: StepFacts, wait: WaitFacts | None) -> Blocker:
    since = wait.created_at if wait else facts.created_at
    deadline = wait.deadline_at if wait else None
    by = f" (deadline {at(deadline)}, then {step.on_deadline.value})" if deadline else ""
    timing: dict[str, JSON] = {"deadline": iso(deadline), "on_deadline": step.on_deadline.value}
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
