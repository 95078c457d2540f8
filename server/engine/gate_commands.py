"""Gates: steps that wait for something outside their run. ResumeRun, ApproveStep and
RejectStep (people), the deadlines of every gate (timers like any other: any replica's timer
loop fires them, exactly once), and resolving a gate, which events and child runs
(`event_commands`) share.

A gate step holds no attempt and no worker slot: its step row is paused or waiting and a
`waits` row says what for. Resolving it is one transaction under the run's lock, like every
other change of a run; each command is recorded in the run's history (`store.commands`),
refused ones too."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from server.engine import planner
from server.engine.command_log import CommandLog, require_live
from server.engine.context import merge_output
from server.engine.core import log
from server.engine.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    run_not_found,
)
from server.engine.model import (
    COMPLETE,
    JSON,
    TERMINAL_RUN_STATUSES,
    DeadlineAction,
    Failure,
    FailureReason,
    PayloadField,
    StepKind,
    StepStatus,
    Trigger,
    WorkflowDef,
)
from server.engine.payload import validate_payload
from server.engine.views import RunView
from server.store import changes, runs, waits
from server.store.changes import NewEvent, RunChange, StepUpdate
from server.store.commands import CommandRecord
from server.store.db import Connection, retry_conflicts
from server.store.runs import LockedRun

DEADLINE_ACTOR = "squidmesh:deadline"
"""The actor of a decision a deadline made."""


@dataclass(frozen=True)
class Approval:
    """The result of ApproveStep."""

    run: RunView
    decided: bool
    approvals: int
    required: int


class GateCommands(CommandLog):
    # --- people ------------------------------------------------------------------------------

    async def resume_run(
        self, run_id: uuid.UUID, step: str, actor: str, comment: str, idempotency_key: str = ""
    ) -> RunView:
        async def act(
            conn: Connection, run: LockedRun, defn: WorkflowDef
        ) -> tuple[RunChange, dict[str, JSON]]:
            require_live(run)
            wait = await _waiting_step(conn, run, defn, step, StepKind.PAUSE)
            output: dict[str, JSON] = {
                "actors": [actor],
                "comments": [comment] if comment else [],
                "resumed_at": _now_text(),
            }
            return await self._resolve(conn, run, defn, wait.step_name, output), {}

        request = CommandRecord(run_id, "resume", actor, comment, idempotency_key, step)
        await self._run_command(request, act)
        return await self._read_run(run_id)

    async def approve_step(
        self,
        run_id: uuid.UUID,
        step: str,
        actor: str,
        comment: str,
        payload: dict[str, JSON],
        idempotency_key: str = "",
    ) -> Approval:
        async def act(
            conn: Connection, run: LockedRun, defn: WorkflowDef
        ) -> tuple[RunChange, dict[str, JSON]]:
            require_live(run)
            wait = await _waiting_step(conn, run, defn, step, StepKind.APPROVAL)
            gate = defn.step(wait.step_name)
            vote = _vote(gate.name, gate.decision_fields, actor, comment, payload)
            if any(v["actor"] == actor for v in wait.votes):
                raise FailedPrecondition(
                    f"'{actor}' already approved step '{gate.name}'; approvals count once per "
                    "actor",
                    reason="ALREADY_APPROVED",
                    metadata={"step": gate.name, "actor": actor},
                )
            votes = [*wait.votes, vote]
            result: dict[str, JSON] = {
                "decided": len(votes) >= gate.required_approvals,
                "approvals": len(votes),
                "required_approvals": gate.required_approvals,
            }
            if len(votes) < gate.required_approvals:
                await waits.add_vote(conn, run.id, gate.name, vote)
                data = {"actor": actor, "comment": comment, **result}
                data.pop("decided")
                change = RunChange(
                    run.id, events=[NewEvent("approval_voted", gate.name, data=data)]
                )
                return change, result
            output = _decision("approved", votes)
            return await self._resolve(conn, run, defn, gate.name, output), result

        request = CommandRecord(
            run_id, "approve", actor, comment, idempotency_key, step, data={"payload": payload}
        )
        applied = await self._run_command(request, act)
        return Approval(
            await self._read_run(run_id),
            bool(applied.data.get("decided")),
            int(applied.data.get("approvals") or 0),
            int(applied.data.get("required_approvals") or 0),
        )

    async def reject_step(
        self,
        run_id: uuid.UUID,
        step: str,
        actor: str,
        comment: str,
        payload: dict[str, JSON],
        idempotency_key: str = "",
    ) -> RunView:
        async def act(
            conn: Connection, run: LockedRun, defn: WorkflowDef
        ) -> tuple[RunChange, dict[str, JSON]]:
            require_live(run)
            wait = await _waiting_step(conn, run, defn, step, StepKind.APPROVAL)
            gate = defn.step(wait.step_name)
            vote = _vote(gate.name, gate.decision_fields, actor, comment, payload)
            output = _decision("rejected", [vote])
            failure = _rejected(gate.name, actor, comment, output)
            return await self._resolve(conn, run, defn, gate.name, output, failure), {}

        request = CommandRecord(
            run_id, "reject", actor, comment, idempotency_key, step, data={"payload": payload}
        )
        await self._run_command(request, act)
        return await self._read_run(run_id)

    # --- deadlines ---------------------------------------------------------------------------

    async def expire_waits(self) -> int:
        """Fires the deadlines of gates that passed: an approval is rejected, fails the run or
        is routed (its `on_deadline`); an event or child wait fails (its error route)."""
        async with self._db.connect() as conn:
            due = await waits.due_deadlines(conn)
        fired = 0
        for run_id, step in due:
            change = await self._fire_deadline(run_id, step)
            if change is not None:
                fired += 1
                await self._after_commit(change)
        return fired

    @retry_conflicts
    async def _fire_deadline(self, run_id: uuid.UUID, step: str) -> RunChange | None:
        async with self._db.transaction() as conn:
            if not await waits.claim_due(conn, run_id, step):
                return None  # resolved meanwhile, or another replica fires it
            run = await runs.lock(conn, run_id)
            assert run is not None
            if run.status in TERMINAL_RUN_STATUSES:
                await waits.resolve(conn, run_id, step)
                return None
            defn = await self._definition(conn, run.workflow_id)
            gate = defn.step(step)
            exceeded = Failure(
                reason=FailureReason.DEADLINE_EXCEEDED,
                type="DeadlineExceeded",
                message=f"step '{step}' was not resolved within its deadline of "
                f"{gate.deadline_ms} ms",
                step=step,
                non_retryable=True,
            )
            if gate.kind is not StepKind.APPROVAL:
                change = await self._resolve(conn, run, defn, step, None, exceeded)
            elif gate.on_deadline is DeadlineAction.REJECT:
                comment = "the deadline passed"
                output = _decision(
                    "rejected", [{"actor": DEADLINE_ACTOR, "comment": comment, "payload": {}}]
                )
                failure = _rejected(step, DEADLINE_ACTOR, comment, output)
                change = await self._resolve(conn, run, defn, step, output, failure)
            elif gate.on_deadline is DeadlineAction.FAIL:
                plan = planner.Plan(failure=exceeded)
                change = await self._resolve(conn, run, defn, step, None, exceeded, plan)
            else:
                target = gate.on_deadline_step
                plan = planner.Plan(
                    schedule=() if target == COMPLETE else (target,),
                    complete=target == COMPLETE,
                    transitions=((step, target),),
                )
                change = await self._resolve(conn, run, defn, step, None, exceeded, plan)
            await changes.apply(conn, change)
        log.info("gate_deadline_fired", run_id=str(run_id), step=step)
        return change

    # --- shared ------------------------------------------------------------------------------

    async def _resolve(
        self,
        conn: Connection,
        run: LockedRun,
        defn: WorkflowDef,
        name: str,
        output: JSON,
        failure: Failure | None = None,
        plan: planner.Plan | None = None,
    ) -> RunChange:
        """The change that resolves the gate step `name` (under the run's lock): it completes
        with `output` (which lands in the context), or fails with `failure` (its error route
        follows, or `plan`), and the run moves on."""
        await waits.resolve(conn, run.id, name)
        step = defn.step(name)
        context = run.context if output is None else merge_output(run.context, step, output)
        # Readiness needs every step's status with dependencies; with transitions one step at a
        # time is live, and it is this one (as for results decided from the claim).
        statuses = await runs.step_statuses(conn, run.id) if defn.uses_dependencies else {}
        completed = await runs.completed_steps(conn, run.id) if defn.compensates else []
        change = RunChange(run.id, context=context, parent_run_id=run.parent_run_id)
        if failure is None:
            change.step_updates.append(
                StepUpdate(name, StepStatus.COMPLETED, output=output, ended=True)
            )
            change.events.append(NewEvent("step_completed", name, data={"output": output}))
            statuses[name] = StepStatus.COMPLETED
            completed = [*completed, name]
            plan = plan or planner.after_success(defn, name, context, statuses)
        else:
            failure = replace(failure, step=name)
            change.step_updates.append(
                StepUpdate(
                    name, StepStatus.FAILED, output=output, error=failure.to_json(), ended=True
                )
            )
            change.events.append(
                NewEvent("step_failed", name, data={"error": failure.to_json(), "output": output})
            )
            statuses[name] = StepStatus.FAILED
            plan = plan or planner.after_failure(defn, name, failure, context)
        self._apply_plan(change, defn, plan, context, statuses, completed)
        return change

    async def _read_run(self, run_id: uuid.UUID) -> RunView:
        async with self._db.snapshot() as conn:
            run = await runs.get(conn, run_id)
        if run is None:
            raise run_not_found(run_id)
        return run


async def _waiting_step(
    conn: Connection, run: LockedRun, defn: WorkflowDef, name: str, kind: StepKind
) -> waits.Wait:
    """The open wait of the named gate step (or of the run's only gate step of this kind
    when no name is given), or why the command cannot apply."""
    open_waits = await waits.open_waits(conn, run.id)
    if name:
        if name not in {s.name for s in defn.steps}:
            raise InvalidArgument(
                f"workflow '{defn.name}' has no step '{name}'",
                [FieldViolation("step", f"unknown step '{name}'")],
                reason="STEP_NOT_FOUND",
            )
        step = defn.step(name)
        if step.kind is not kind:
            raise FailedPrecondition(
                f"step '{name}' is a {step.kind.value} step, not a {kind.value} step",
                reason="WRONG_STEP_KIND",
                metadata={"step": name, "kind": step.kind.value},
            )
        wait = next((w for w in open_waits if w.step_name == name), None)
        if wait is None:
            status = (await runs.step_statuses(conn, run.id)).get(name)
            where = f"it is {status.value}" if status else "the run has not reached it"
            raise FailedPrecondition(
                f"step '{name}' of run '{run.id}' is not waiting ({where})",
                reason="STEP_NOT_WAITING",
                metadata={"step": name, "status": status.value if status else ""},
            )
        return wait
    candidates = [w for w in open_waits if defn.step(w.step_name).kind is kind]
    if not candidates:
        raise FailedPrecondition(
            f"no {kind.value} step of run '{run.id}' is waiting (the run is {run.status.value})",
            reason="STEP_NOT_WAITING",
            metadata={"run_id": str(run.id), "status": run.status.value},
        )
    if len(candidates) > 1:
        names = ", ".join(w.step_name for w in candidates)
        raise InvalidArgument(
            f"several {kind.value} steps wait ({names}): name one",
            [FieldViolation("step", f"is required: {names} wait")],
        )
    return candidates[0]


def _vote(
    step: str,
    fields: tuple[PayloadField, ...],
    actor: str,
    comment: str,
    payload: dict[str, JSON],
) -> dict[str, JSON]:
    """One person's decision, its payload checked against the approval's declared fields."""
    checked = validate_payload(Trigger(name=step, payload=fields), payload, datetime.now(UTC))
    return {"actor": actor, "comment": comment, "at": _now_text(), "payload": checked}


def _decision(decision: str, votes: list[dict[str, JSON]]) -> dict[str, JSON]:
    """An approval's output: who decided what, when, with which payload (the votes' payloads
    merged, later ones winning)."""
    payload: dict[str, JSON] = {}
    for vote in votes:
        payload.update(vote.get("payload") or {})
    return {
        "decision": decision,
        "actors": [v["actor"] for v in votes],
        "comments": [v["comment"] for v in votes if v.get("comment")],
        "decided_at": _now_text(),
        "payload": payload,
    }


def _rejected(step: str, actor: str, comment: str, decision: dict[str, JSON]) -> Failure:
    return Failure(
        reason=FailureReason.APPROVAL_REJECTED,
        type="ApprovalRejected",
        message=f"step '{step}' was rejected by {actor}" + (f": {comment}" if comment else ""),
        details={"decision": decision},
        step=step,
        non_retryable=True,
    )


def _now_text() -> str:
    return datetime.now(UTC).isoformat()
