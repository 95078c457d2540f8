"""Gates: steps that wait for something outside their run. ResumeRun, ApproveStep and
RejectStep (people), PublishEvent (events), the end of a child run, and the deadlines of all
of them (timers like any other: any replica's timer loop fires them, exactly once).

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
from server.store import changes, commands, runs, waits
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


@dataclass(frozen=True)
class Publication:
    """The result of PublishEvent."""

    event_id: str
    created: bool
    published_at: datetime
    resolved_run_ids: list[uuid.UUID]


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

    # --- events ------------------------------------------------------------------------------

    @retry_conflicts
    async def publish_event(
        self,
        name: str,
        correlation_key: str,
        payload: dict[str, JSON],
        event_id: str,
        actor: str,
    ) -> Publication:
        """Stores the event and resolves every wait for it, in one transaction."""
        self._check_size("payload", payload)
        event_id = event_id or uuid.uuid4().hex
        resolved: list[tuple[uuid.UUID, RunChange]] = []
        async with self._db.transaction() as conn:
            await waits.lock_event_key(conn, name, correlation_key)
            event, created = await waits.publish(
                conn, name, correlation_key, event_id, payload, actor
            )
            if created:
                for run_id in await waits.waiting_for(conn, name, correlation_key):
                    change = await self._resolve_event(conn, run_id, name, correlation_key, event)
                    if change is not None:
                        resolved.append((run_id, change))
        for _, change in resolved:
            await self._after_commit(change)
        log.info(
            "event_published",
            event_name=name,
            correlation_key=correlation_key,
            event_id=event_id,
            created=created,
            resolved=len(resolved),
        )
        return Publication(event_id, created, event.published_at, [r for r, _ in resolved])

    async def _resolve_event(
        self,
        conn: Connection,
        run_id: uuid.UUID,
        name: str,
        key: str,
        event: waits.PublishedEvent,
    ) -> RunChange | None:
        """Resolves the run's (first) open wait for the event, under the run's lock (the
        event key's lock is held). None when it no longer waits."""
        run = await runs.lock(conn, run_id)
        if run is None or run.status in TERMINAL_RUN_STATUSES:
            return None
        # One event resolves one wait per run: its oldest for this name and key.
        wait = next(
            (
                w
                for w in await waits.open_waits(conn, run_id)
                if w.kind == "event" and w.event_name == name and w.correlation_key == key
            ),
            None,
        )
        if wait is None:
            return None
        defn = await self._definition(conn, run.workflow_id)
        change = await self._resolve(conn, run, defn, wait.step_name, event.payload)
        await changes.apply(conn, change)
        await commands.record(
            conn,
            CommandRecord(
                run_id,
                "event",
                event.actor,
                idempotency_key=event.event_id,
                step=wait.step_name,
                data={
                    "event": name,
                    "correlation_key": wait.correlation_key or "",
                    "payload": event.payload,
                },
            ),
        )
        return change

    async def _look_back(self, run_id: uuid.UUID) -> None:
        """The run has open waits for events or child runs: resolves each whose event was
        published since the run started, or whose child ended (what happened before the run
        reached its wait). Each event key is locked as PublishEvent locks it, so a publication
        that committed meanwhile is seen by one side or the other."""
        async with self._db.connect() as conn:
            pending = [w for w in await waits.open_waits(conn, run_id) if w.kind in _LOOKED_UP]
        for wait in pending:
            change = await self._look_back_at(wait)
            if change is not None:
                await self._after_commit(change)

    @retry_conflicts
    async def _look_back_at(self, wait: waits.Wait) -> RunChange | None:
        async with self._db.transaction() as conn:
            if wait.kind == "event":
                assert wait.event_name is not None and wait.correlation_key is not None
                await waits.lock_event_key(conn, wait.event_name, wait.correlation_key)
            run = await runs.lock(conn, wait.run_id)
            if run is None or run.status in TERMINAL_RUN_STATUSES:
                return None
            still_open = {w.step_name for w in await waits.open_waits(conn, run.id)}
            if wait.step_name not in still_open:
                return None
            defn = await self._definition(conn, run.workflow_id)
            if wait.kind == "event":
                since = await runs.created_at(conn, run.id)
                event = await waits.unconsumed_event(conn, wait, since)
                if event is None:
                    return None
                assert wait.event_name is not None
                change = await self._resolve(conn, run, defn, wait.step_name, event.payload)
                await commands.record(
                    conn,
                    CommandRecord(
                        run.id,
                        "event",
                        event.actor,
                        idempotency_key=event.event_id,
                        step=wait.step_name,
                        data={
                            "event": wait.event_name,
                            "correlation_key": wait.correlation_key or "",
                            "payload": event.payload,
                        },
                    ),
                )
            else:
                child = await runs.child(conn, run.id, wait.correlation_key or "")
                if child is None or not child.status.terminal:
                    return None
                output: dict[str, JSON] = {
                    "run_id": str(child.id),
                    "workflow": child.workflow_name,
                    "status": child.status.value,
                    "context": child.context,
                }
                failure = None
                if child.status.value != "completed":
                    failure = Failure(
                        reason=FailureReason.CHILD_RUN_FAILED,
                        type="ChildRunFailed",
                        message=f"child run {child.id} ({child.workflow_name}) ended "
                        f"{child.status.value}",
                        details={"child": output, "error": child.error},
                        step=wait.step_name,
                    )
                change = await self._resolve(conn, run, defn, wait.step_name, output, failure)
            await changes.apply(conn, change)
        return change

    async def sweep_waits(self) -> int:
        """The timer loop's safety net: resolves waits whose event was published, or whose
        child ended, while no look-back ran (a crash between a wait's commit and its look-back,
        a child that ended on another replica)."""
        async with self._db.connect() as conn:
            run_ids = await waits.runs_with_open_lookups(conn)
        for run_id in run_ids:
            await self._look_back(run_id)
        return len(run_ids)

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
        statuses = await runs.step_statuses(conn, run.id)
        completed = await runs.completed_steps(conn, run.id) if defn.compensates else []
        change = RunChange(run.id, context=context)
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


_LOOKED_UP = ("event", "child")
"""Waits for something that may have happened before the run reached them."""


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
