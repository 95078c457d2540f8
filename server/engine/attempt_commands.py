"""The worker protocol's commands (claim, result, heartbeat) and the timer loop's (due
timers, lost dispatches, expired leases). Every change is fenced by the attempt's id, token and
status."""

from __future__ import annotations

import functools
import uuid
from dataclasses import replace

from server.engine import planner
from server.engine.batcher import Batcher
from server.engine.context import merge_output, select_input
from server.engine.core import EngineCore
from server.engine.errors import ResourceExhausted
from server.engine.model import (
    ACTIVE_RUN_STATUSES,
    JSON,
    TERMINAL_RUN_STATUSES,
    AttemptStatus,
    Failure,
    FailureReason,
    RunStatus,
    StepStatus,
    WorkflowDef,
)
from server.engine.retry import DEFAULT_RETRY_POLICY, decide_retry
from server.engine.views import (
    HeartbeatResult,
    ResultDecision,
    StartDecision,
)
from server.store import attempts, changes, runs, workers
from server.store.changes import NewEvent, RunChange, StepUpdate
from server.store.db import Connection

_CLAIMS_REMEMBERED = 10_000

_UNCLAIMABLE = {AttemptStatus.SCHEDULED, AttemptStatus.CANCELLED}
"""A scheduled attempt whose claim failed belongs to a run that is no longer active."""
_CANCELLED_RUN = TERMINAL_RUN_STATUSES | {RunStatus.CANCELLING}


class AttemptCommands(EngineCore):
    # --- attempts (the worker protocol) ------------------------------------------------------

    async def claim_attempt(
        self, attempt_id: uuid.UUID, token: str, worker_id: str
    ) -> StartDecision:
        claimed = await self._claim_batcher.submit((attempt_id, token, worker_id))
        if claimed is None:
            async with self._db.connect() as conn:
                state = await attempts.state(conn, attempt_id)
            if state is None:
                return StartDecision(accepted=False, refusal_reason="unknown")
            if state.token != token:
                return StartDecision(accepted=False, refusal_reason="stale")
            if state.status == AttemptStatus.RUNNING and state.worker_id == worker_id:
                claimed = state.claimed  # the same worker resending after a reconnect
            elif state.status in _UNCLAIMABLE or state.run_status in _CANCELLED_RUN:
                return StartDecision(accepted=False, refusal_reason="cancelled")
            else:
                return StartDecision(accepted=False, refusal_reason="duplicate")
        defn = await self._cached_definition(claimed.workflow_id)
        self._wakeups.run_changed(str(claimed.run_id))
        self._claims[attempt_id] = claimed
        if len(self._claims) > _CLAIMS_REMEMBERED:
            self._claims.popitem(last=False)  # results that never came (lost workers)
        step = defn.step(claimed.step_name)
        return StartDecision(
            accepted=True,
            run_id=claimed.run_id,
            workflow=claimed.workflow_name,
            step=claimed.step_name,
            handler=claimed.handler,
            attempt_number=claimed.number,
            input=select_input(step, claimed.context),
            idempotency_key=f"{claimed.run_id}:{claimed.step_name}",
            heartbeat_timeout_ms=claimed.heartbeat_timeout_ms,
        )

    @functools.cached_property
    def _claim_batcher(self) -> Batcher[tuple[uuid.UUID, str, str], attempts.Claimed | None]:
        return Batcher(self._claim_batch)

    async def _claim_batch(
        self, requests: list[tuple[uuid.UUID, str, str]]
    ) -> list[attempts.Claimed | None]:
        """One statement (its own transaction) for every claim that arrived together."""
        async with self._db.connect() as conn:
            claimed = await attempts.claim(conn, requests)
        return [claimed.get((attempt_id, worker)) for attempt_id, _, worker in requests]

    async def complete_attempt(
        self, attempt_id: uuid.UUID, token: str, output: JSON
    ) -> ResultDecision:
        try:
            self._check_size("output", output)
        except ResourceExhausted as exc:
            failure = Failure(
                reason="output_too_large",
                type="OutputTooLarge",
                message=exc.message,
                non_retryable=True,
            )
            return await self.fail_attempt(attempt_id, token, failure, None)
        claimed = self._claims.pop(attempt_id, None)
        if claimed is not None and await self._complete_as_claimed(
            attempt_id, token, output, claimed
        ):
            return ResultDecision(accepted=True)
        async with self._db.transaction() as conn:
            finished = await attempts.finish(
                conn, attempt_id, token, AttemptStatus.SUCCEEDED, output=output
            )
            if finished is None:
                return await self._refusal(conn, attempt_id, token, AttemptStatus.SUCCEEDED)
            run, name, number = finished.run, finished.step_name, finished.number
            defn = await self._definition(conn, run.workflow_id)
            if run.status in ACTIVE_RUN_STATUSES:
                statuses: dict[str, StepStatus] = {}
                if defn.uses_dependencies:
                    statuses = await runs.step_statuses(conn, run.id)
                change = self._success(defn, run.id, name, number, run.context, output, statuses)
            else:
                change = RunChange(
                    run.id,
                    step_updates=[
                        StepUpdate(name, StepStatus.COMPLETED, output=output, ended=True)
                    ],
                    events=[NewEvent("step_completed", name, number, {"output": output})],
                )
                if run.status == RunStatus.CANCELLING:
                    change.context = merge_output(run.context, defn.step(name), output)
                    await self._settle_cancel(conn, change)
                # else a parallel branch already ended the run: keep the record only
            await changes.apply(conn, change)
        await self._after_commit(change)
        return ResultDecision(accepted=True)

    async def _complete_as_claimed(
        self, attempt_id: uuid.UUID, token: str, output: JSON, claimed: attempts.Claimed
    ) -> bool:
        """The common case in one statement: nothing happened to the run since this process
        claimed the attempt, so the decision can be made from the run as the claim saw it.
        False when that no longer holds (nothing written)."""
        defn = self._definitions[claimed.workflow_id].definition
        if defn.uses_dependencies:
            return False  # readiness depends on the other steps' states
        change = self._success(
            defn, claimed.run_id, claimed.step_name, claimed.number, claimed.context, output, {}
        )
        applied = await self._result_batcher.submit(
            changes.Succeeded(change, attempt_id, token, output, claimed.last_seq)
        )
        if applied:
            await self._after_commit(change)
        return applied

    @functools.cached_property
    def _result_batcher(self) -> Batcher[changes.Succeeded, bool]:
        return Batcher(self._result_batch)

    async def _result_batch(self, items: list[changes.Succeeded]) -> list[bool]:
        """One statement for the results that arrived together, at most one per run (another
        one for the same run takes the general path)."""
        first: dict[uuid.UUID, changes.Succeeded] = {}
        for item in items:
            first.setdefault(item.change.run_id, item)
        unique = list(first.values())
        async with self._db.connect() as conn:
            written = await changes.apply_if_current(conn, unique)
        applied = {item.attempt_id for item, ok in zip(unique, written, strict=True) if ok}
        return [item.attempt_id in applied for item in items]

    def _success(
        self,
        defn: WorkflowDef,
        run_id: uuid.UUID,
        name: str,
        number: int,
        context: dict[str, JSON],
        output: JSON,
        statuses: dict[str, StepStatus],
    ) -> RunChange:
        """The change that follows a succeeded attempt of an active run."""
        context = merge_output(context, defn.step(name), output)
        change = RunChange(
            run_id,
            context=context,
            step_updates=[StepUpdate(name, StepStatus.COMPLETED, output=output, ended=True)],
            events=[NewEvent("step_completed", name, number, {"output": output})],
        )
        statuses[name] = StepStatus.COMPLETED
        self._apply_plan(change, defn, planner.after_success(defn, name, context, statuses))
        return change

    async def fail_attempt(
        self,
        attempt_id: uuid.UUID,
        token: str,
        failure: Failure,
        retry_after_ms: int | None,
        *,
        lease_expired: bool = False,
    ) -> ResultDecision:
        self._claims.pop(attempt_id, None)
        async with self._db.transaction() as conn:
            finished = await attempts.finish(
                conn,
                attempt_id,
                token,
                AttemptStatus.FAILED,
                error=failure.to_json(),
                only_if_lease_expired=lease_expired,
            )
            if finished is None:
                return await self._refusal(conn, attempt_id, token, AttemptStatus.FAILED)
            run, name, number = finished.run, finished.step_name, finished.number
            failure = replace(failure, step=name, attempt_number=number)
            defn = await self._definition(conn, run.workflow_id)
            step = defn.step(name)
            change = RunChange(
                run.id,
                events=[NewEvent("attempt_failed", name, number, {"error": failure.to_json()})],
            )
            if run.status == RunStatus.CANCELLING:
                change.step_updates.append(
                    StepUpdate(name, StepStatus.CANCELLED, error=failure.to_json(), ended=True)
                )
                await self._settle_cancel(conn, change)
            elif run.status in TERMINAL_RUN_STATUSES:
                change.step_updates.append(
                    StepUpdate(name, StepStatus.FAILED, error=failure.to_json(), ended=True)
                )
            else:
                decision = decide_retry(
                    step.retry or DEFAULT_RETRY_POLICY, number, failure, retry_after_ms
                )
                if decision.retry:
                    self._schedule(
                        change, defn, name, number=number + 1, delay_ms=decision.delay_ms
                    )
                    change.step_updates.append(
                        StepUpdate(
                            name,
                            StepStatus.RETRYING if decision.delay_ms else StepStatus.SCHEDULED,
                            error=failure.to_json(),
                        )
                    )
                    if decision.delay_ms:
                        change.status = RunStatus.RETRYING
                else:
                    change.step_updates.append(
                        StepUpdate(name, StepStatus.FAILED, error=failure.to_json(), ended=True)
                    )
                    change.events.append(
                        NewEvent(
                            "step_failed",
                            name,
                            number,
                            {"error": failure.to_json(), "retry": decision.reason},
                        )
                    )
                    plan = planner.after_failure(defn, name, failure, run.context)
                    self._apply_plan(change, defn, plan)
            await changes.apply(conn, change)
        await self._after_commit(change)
        return ResultDecision(accepted=True)

    async def heartbeat(
        self, worker_id: str, beats: list[tuple[uuid.UUID, str, JSON]]
    ) -> HeartbeatResult:
        async with self._db.connect() as conn:
            alive = await attempts.heartbeat(conn, worker_id, beats)
        kept = {attempt_id for attempt_id, _ in alive}
        return HeartbeatResult(
            cancel=[attempt_id for attempt_id, cancel in alive if cancel],
            lost=[str(attempt_id) for attempt_id, _, _ in beats if str(attempt_id) not in kept],
        )

    async def register_worker(
        self,
        worker_id: str,
        queues: list[str],
        handlers: list[str],
        concurrency: int,
        labels: dict[str, str],
    ) -> None:
        async with self._db.transaction() as conn:
            await workers.register(conn, worker_id, queues, handlers, concurrency, labels)

    # --- timers and reconciliation -----------------------------------------------------------

    async def expire_leases(self) -> int:
        """Fails running attempts whose worker stopped heartbeating, as worker_lost."""
        async with self._db.connect() as conn:
            expired = await attempts.expired_leases(conn)
        for attempt_id, token in expired:
            await self.fail_attempt(
                attempt_id,
                token,
                Failure(
                    reason=FailureReason.WORKER_LOST,
                    type="WorkerLost",
                    message="the worker stopped heartbeating and its lease expired",
                ),
                None,
                lease_expired=True,
            )
        return len(expired)

    async def kick_due(self, dispatch_timeout_ms: int) -> int:
        """Publishes due timers and re-publishes dispatches that were never claimed."""
        async with self._db.connect() as conn:
            due = await attempts.kick_due(conn, dispatch_timeout_ms)
        if due:
            await self._publish(due)
        return len(due)

    async def next_timer_ms(self) -> float | None:
        async with self._db.connect() as conn:
            return await attempts.next_timer_due_ms(conn)

    async def _refusal(
        self, conn: Connection, attempt_id: uuid.UUID, token: str, outcome: AttemptStatus
    ) -> ResultDecision:
        state = await attempts.state(conn, attempt_id)
        if state is None:
            return ResultDecision(accepted=False, refusal_reason="unknown")
        if state.token == token and state.status == outcome:
            return ResultDecision(accepted=True)  # a resend of a result already recorded
        if state.token != token or not state.is_latest:
            return ResultDecision(accepted=False, refusal_reason="stale")
        return ResultDecision(accepted=False, refusal_reason=f"attempt is {state.status.value}")
