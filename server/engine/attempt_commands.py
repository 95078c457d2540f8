"""The worker protocol's commands (claim, result, heartbeat) and the timer loop's (due
timers and waits, lost dispatches, expired leases and deadlines). Every change is fenced by the
attempt's id, token and status."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Sequence
from dataclasses import replace

from server.engine import planner
from server.engine.batcher import Batcher
from server.engine.context import merge_output, select_input
from server.engine.core import EngineCore, log
from server.engine.errors import ResourceExhausted
from server.engine.handoff import hand_off
from server.engine.model import (
    ACTIVE_RUN_STATUSES,
    JSON,
    LIVE_STEP_STATUSES,
    TERMINAL_RUN_STATUSES,
    AttemptStatus,
    Failure,
    FailureReason,
    RunStatus,
    Step,
    StepKind,
    StepStatus,
    WorkflowDef,
    compensated_step,
    compensation_step,
)
from server.engine.retry import DEFAULT_RETRY_POLICY, RetryDecision, decide_retry
from server.engine.views import (
    Handoff,
    HandoffOffer,
    HeartbeatResult,
    ResultDecision,
    RetryHandoff,
    StartDecision,
)
from server.store import attempts, changes, runs, workers
from server.store.changes import NewAttempt, NewEvent, RunChange, StepUpdate
from server.store.db import Connection, retry_conflicts
from server.store.runs import LockedRun

_CLAIMS_REMEMBERED = 10_000
_REPUBLISH_BATCH = 500
DECLINE_BACKOFF_MS = 100
"""How soon an attempt a worker declined is published again the first time."""

_UNCLAIMABLE = {AttemptStatus.SCHEDULED, AttemptStatus.CANCELLED}
"""A scheduled attempt whose claim failed belongs to a run that is no longer active."""
_CANCELLED_RUN = TERMINAL_RUN_STATUSES | {RunStatus.CANCELLING}
_EXPIRY_REASONS = {FailureReason.TIMED_OUT, FailureReason.WORKER_LOST}


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
        self._wakeups.run_changed(str(claimed.run_id))
        return await self._accepted(attempt_id, claimed)

    async def _accepted(self, attempt_id: uuid.UUID, claimed: attempts.Claimed) -> StartDecision:
        """What the worker that claimed an attempt (or was handed it) runs. The claim is
        remembered for the one-statement path of its result."""
        defn = await self._cached_definition(claimed.workflow_id)
        self._claims[attempt_id] = claimed
        if len(self._claims) > _CLAIMS_REMEMBERED:
            self._claims.popitem(last=False)  # results that never came (lost workers)
        undone = compensated_step(claimed.step_name)
        if undone is None:
            step_input = select_input(defn.step(claimed.step_name), claimed.context)
        else:
            # A compensation gets what the step it undoes got, and what that step returned.
            async with self._db.connect() as conn:
                output = await runs.step_output(conn, claimed.run_id, undone)
            step_input = {
                "input": select_input(defn.step(undone), claimed.context),
                "output": output,
            }
        if claimed.attempt_timeout_ms:
            # A new deadline for the timer loops.
            self._wakeups.timers_changed(claimed.attempt_timeout_ms)
        return StartDecision(
            accepted=True,
            run_id=claimed.run_id,
            workflow=claimed.workflow_name,
            step=claimed.step_name,
            handler=claimed.handler,
            attempt_number=claimed.number,
            input=step_input,
            idempotency_key=f"{claimed.run_id}:{claimed.step_name}",
            heartbeat_timeout_ms=claimed.heartbeat_timeout_ms,
            attempt_timeout_ms=claimed.attempt_timeout_ms,
        )

    @functools.cached_property
    def _claim_batcher(self) -> Batcher[tuple[uuid.UUID, str, str], attempts.Claimed | None]:
        return Batcher(self._claim_batch)

    @retry_conflicts
    async def _claim_batch(
        self, requests: list[tuple[uuid.UUID, str, str]]
    ) -> list[attempts.Claimed | None]:
        """One statement (its own transaction) for every claim that arrived together."""
        async with self._db.connect() as conn:
            claimed = await attempts.claim(conn, requests)
        return [claimed.get((attempt_id, worker)) for attempt_id, _, worker in requests]

    async def decline_attempt(
        self, attempt_id: uuid.UUID, token: str, worker_id: str
    ) -> StartDecision:
        """A worker received the attempt's task but cannot run it (it lacks the handler): the
        attempt is published again after a backoff that doubles with each delivery (from
        `DECLINE_BACKOFF_MS` up to the dispatch timeout), for a worker that has the handler.
        The decline is recorded on the run (at most once a second), so it says why it waits."""
        async with self._db.connect() as conn:
            declined = await attempts.decline(
                conn,
                attempt_id,
                token,
                worker_id,
                DECLINE_BACKOFF_MS,
                self._config.dispatch_timeout_ms,
            )
            if declined is not None and declined[1] is not None:
                await self._note(conn, "attempt_declined", [declined[1]])
        if declined is not None:
            log.info(
                "attempt_declined",
                attempt=str(attempt_id),
                worker_id=worker_id,
                retry_in_ms=declined[0],
            )
            self._wakeups.timers_changed(declined[0])
        return StartDecision(accepted=False, refusal_reason="declined")

    async def _note(self, conn: Connection, kind: str, noted: list[attempts.Noted]) -> None:
        """Records attempt events (progress, declines) in their runs' logs, one change per
        run, and wakes the runs' watchers."""
        by_run: dict[uuid.UUID, RunChange] = {}
        for note in noted:
            change = by_run.setdefault(note.run_id, RunChange(note.run_id))
            change.events.append(NewEvent(kind, note.step_name, note.number, note.data))
        for change in by_run.values():
            await changes.apply(conn, change)
            self._wakeups.run_changed(str(change.run_id))

    def _hand_off(
        self, change: RunChange, offer: HandoffOffer | None, attempt_id: uuid.UUID
    ) -> NewAttempt | None:
        if offer is None or not self._config.handoff:
            return None
        return hand_off(change, offer, attempt_id)

    async def _answer(
        self,
        change: RunChange,
        handed: NewAttempt | None,
        run: attempts.Claimed | LockedRun,
        last_seq: int,
    ) -> ResultDecision:
        """The answer to a recorded result, with the attempt handed over (if any) to run next.
        `run`: the run as claimed or locked before `change`; `last_seq`: its sequence after."""
        if handed is None:
            return ResultDecision(accepted=True)
        if handed.worker_id is None:  # a retry handed back, to claim when due
            return ResultDecision(
                accepted=True, retry=RetryHandoff(handed.id, handed.token, handed.delay_ms)
            )
        claimed = attempts.Claimed(
            run_id=change.run_id,
            workflow_id=run.workflow_id,
            workflow_name=run.workflow_name,
            step_name=handed.step_name,
            number=handed.number,
            handler=handed.handler,
            heartbeat_timeout_ms=handed.heartbeat_timeout_ms,
            attempt_timeout_ms=handed.attempt_timeout_ms,
            context=run.context if change.context is None else change.context,
            last_seq=last_seq,
            parent_run_id=run.parent_run_id,
        )
        return await self._hand_over(handed.id, handed.token, claimed)

    async def _hand_over(
        self, attempt_id: uuid.UUID, token: str, claimed: attempts.Claimed
    ) -> ResultDecision:
        """The answer to a recorded result that hands over the attempt claimed for its worker."""
        start = await self._accepted(attempt_id, claimed)
        return ResultDecision(accepted=True, handoff=Handoff(attempt_id, token, start))

    @retry_conflicts
    async def complete_attempt(
        self,
        attempt_id: uuid.UUID,
        token: str,
        output: JSON,
        offer: HandoffOffer | None = None,
        *,
        reporter: str,
    ) -> ResultDecision:
        """Records a succeeded attempt and decides what follows; with `offer`, the answer may
        hand the reporting worker the run's next attempt. Only the worker that claimed the
        attempt (`reporter`) may report it."""
        try:
            self._check_size("output", output)
        except ResourceExhausted as exc:
            failure = Failure(
                reason="output_too_large",
                type="OutputTooLarge",
                message=exc.message,
                non_retryable=True,
            )
            return await self.fail_attempt(
                attempt_id, token, failure, None, offer, reporter=reporter
            )
        claimed = self._claims.pop(attempt_id, None)
        if claimed is not None:
            decision = await self._complete_as_claimed(
                attempt_id, token, output, claimed, offer, reporter
            )
            if decision is not None:
                return decision
        async with self._db.transaction() as conn:
            finished = await attempts.finish(
                conn, attempt_id, token, AttemptStatus.SUCCEEDED, output=output, reporter=reporter
            )
            if finished is None:
                return await self._refusal(
                    conn, attempt_id, token, AttemptStatus.SUCCEEDED, offer, reporter
                )
            change = await self._step_succeeded(conn, finished, output)
            change.parent_run_id = finished.run.parent_run_id
            handed = self._hand_off(change, offer, attempt_id)
            last_seq = await changes.apply(conn, change)
        await self._after_commit(change)
        return await self._answer(change, handed, finished.run, last_seq)

    async def _step_succeeded(
        self, conn: Connection, finished: attempts.Finished, output: JSON
    ) -> RunChange:
        """The change that follows a succeeded attempt (or an ended wait), decided under the
        run's lock."""
        run, name, number = finished.run, finished.step_name, finished.number
        defn = await self._definition(conn, run.workflow_id)
        compensation = compensated_step(name) is not None
        if run.status in ACTIVE_RUN_STATUSES and compensation == (
            run.status == RunStatus.COMPENSATING
        ):
            if compensation:
                change = _completed(run.id, name, number, output)
                await self._continue_compensation(conn, change, defn, run, name)
                return change
            statuses: dict[str, StepStatus] = {}
            if defn.uses_dependencies:
                statuses = await runs.step_statuses(conn, run.id)
            completed = await runs.completed_steps(conn, run.id) if defn.compensates else []
            return self._success(
                defn, run.id, name, number, run.context, output, statuses, completed
            )
        change = _completed(run.id, name, number, output)
        if run.status == RunStatus.CANCELLING:
            change.context = _with_output(run.context, defn.step(name), output)
            await self._settle_cancel(conn, change)
        elif run.status == RunStatus.COMPENSATING and not compensation:
            # A parallel branch that ran on while the run failed: compensated too.
            await self._compensate_when_idle(conn, change, defn, run, completed_now=name)
        # else the run ended while this step ran: the record only
        return change

    async def _complete_as_claimed(
        self,
        attempt_id: uuid.UUID,
        token: str,
        output: JSON,
        claimed: attempts.Claimed,
        offer: HandoffOffer | None,
        reporter: str,
    ) -> ResultDecision | None:
        """The common case in one statement: nothing happened to the run since this process
        claimed the attempt, so the decision can be made from the run as the claim saw it.
        None when that no longer holds (nothing written)."""
        defn = self._definitions[claimed.workflow_id].definition
        if defn.uses_dependencies or compensated_step(claimed.step_name) is not None:
            # Readiness depends on the other steps' states; a compensation's end depends on
            # the other compensations.
            return None
        change = self._success(
            defn, claimed.run_id, claimed.step_name, claimed.number, claimed.context, output, {}
        )
        if _needs_compensation(defn, change):
            return None
        handed = self._hand_off(change, offer, attempt_id)
        ended = changes.AttemptEnded(
            change, attempt_id, token, AttemptStatus.SUCCEEDED, claimed.last_seq, reporter, output
        )
        return await self._apply_as_claimed(ended, handed, claimed)

    async def _apply_as_claimed(
        self, ended: changes.AttemptEnded, handed: NewAttempt | None, claimed: attempts.Claimed
    ) -> ResultDecision | None:
        """Writes a result decided from the run as claimed (see `_complete_as_claimed`), in a
        statement shared with the results that arrive together."""
        if not await self._result_batcher.submit(ended):
            return None
        ended.change.parent_run_id = claimed.parent_run_id
        await self._after_commit(ended.change)
        last_seq = claimed.last_seq + len(ended.change.events)
        return await self._answer(ended.change, handed, claimed, last_seq)

    @functools.cached_property
    def _result_batcher(self) -> Batcher[changes.AttemptEnded, bool]:
        return Batcher(self._result_batch)

    @retry_conflicts
    async def _result_batch(self, items: list[changes.AttemptEnded]) -> list[bool]:
        """One statement for the results that arrived together, at most one per run (another
        one for the same run takes the general path)."""
        first: dict[uuid.UUID, changes.AttemptEnded] = {}
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
        completed: Sequence[str] = (),
    ) -> RunChange:
        """The change that follows a succeeded step of an active run. `statuses`: every step
        the run reached (dependency mode); `completed`: the steps completed before, in order
        (workflows that compensate)."""
        context = _with_output(context, defn.step(name), output)
        change = _completed(run_id, name, number, output)
        change.context = context
        statuses[name] = StepStatus.COMPLETED
        plan = planner.after_success(defn, name, context, statuses)
        self._apply_plan(change, defn, plan, context, statuses, (*completed, name))
        return change

    async def _compensate_when_idle(
        self,
        conn: Connection,
        change: RunChange,
        defn: WorkflowDef,
        run: LockedRun,
        completed_now: str | None = None,
    ) -> None:
        """A step of a compensating run ended that is not a compensation: unless one runs
        (the next one follows it), compensations go on (`_continue_compensation`)."""
        statuses = await runs.step_statuses(conn, run.id)
        if any(
            compensated_step(step) is not None and status in LIVE_STEP_STATUSES
            for step, status in statuses.items()
        ):
            return
        await self._continue_compensation(
            conn, change, defn, run, None, completed_now=completed_now
        )

    async def _continue_compensation(
        self,
        conn: Connection,
        change: RunChange,
        defn: WorkflowDef,
        run: LockedRun,
        name: str | None,
        error: Failure | None = None,
        completed_now: str | None = None,
    ) -> None:
        """After compensation `name` ended (failed for good with `error`, else succeeded), or
        a step that ran on after the run failed (`completed_now` if it completed) ended: the
        next compensation, or the run fails with its original error and a summary of what was
        compensated. Nothing while some step still runs (a parallel branch): it is let end
        first."""
        if defn.uses_dependencies and await attempts.running(conn, run.id):
            return
        started = {
            undone
            for step in await runs.step_statuses(conn, run.id)
            if (undone := compensated_step(step)) is not None
        }
        completed = await runs.completed_steps(conn, run.id)
        if completed_now is not None:
            completed = [*completed, completed_now]
        remaining = planner.compensations(defn, completed, started)
        if remaining:
            self._schedule(change, defn, compensation_step(remaining[0]))
            return
        summary: list[JSON] = []
        for step, status, step_error in await runs.compensations(conn, run.id):
            if step == name:
                status = StepStatus.FAILED if error else StepStatus.COMPLETED
                step_error = error.to_json() if error else None
            entry: dict[str, JSON] = {"step": compensated_step(step), "status": status.value}
            if step_error:
                entry["error"] = {k: step_error[k] for k in ("reason", "type", "message")}
            summary.append(entry)
        original = Failure.from_json(run.error)
        assert original is not None, "a compensating run keeps its error"
        failure = replace(original, details={**original.details, "compensation": summary})
        change.status = RunStatus.FAILED
        change.ended = True
        change.error = failure.to_json()
        change.events.append(
            NewEvent(
                "run_failed",
                failure.step or None,
                data={"error": failure.to_json(), "compensation": summary},
            )
        )

    @retry_conflicts
    async def fail_attempt(
        self,
        attempt_id: uuid.UUID,
        token: str,
        failure: Failure,
        retry_after_ms: int | None,
        offer: HandoffOffer | None = None,
        *,
        reporter: str | None = None,
        expired: attempts.Expired | None = None,
    ) -> ResultDecision:
        """Records a failed attempt and decides what follows: a retry, the step's error
        route, compensation, or the run's failure. A worker's report (`reporter`) counts only
        from the worker that claimed the attempt. With `expired` (the timer loop's calls, no
        reporter), only if the attempt's lease or deadline passed. With `offer`, the answer may
        hand the reporting worker the run's next attempt, or hand it back the retry."""
        claimed = self._claims.pop(attempt_id, None)
        if claimed is not None and reporter is not None:
            answer = await self._fail_as_claimed(
                attempt_id, token, failure, retry_after_ms, claimed, offer, reporter
            )
            if answer is not None:
                return answer
        async with self._db.transaction() as conn:
            finished = await attempts.finish(
                conn,
                attempt_id,
                token,
                AttemptStatus.FAILED,
                error=failure.to_json(),
                expired=expired,
                reporter=reporter,
            )
            if finished is None:
                return await self._refusal(
                    conn, attempt_id, token, AttemptStatus.FAILED, offer, reporter
                )
            run, name, number = finished.run, finished.step_name, finished.number
            defn = await self._definition(conn, run.workflow_id)
            step = defn.step(name)
            if finished.past_deadline and failure.reason not in _EXPIRY_REASONS:
                # Whatever the worker reported (e.g. its handler cancelled at the deadline).
                failure = timed_out(step.attempt_timeout_ms or 0)
                await attempts.set_error(conn, attempt_id, failure.to_json())
            failure = replace(failure, step=name, attempt_number=number)
            change = RunChange(
                run.id,
                events=[NewEvent("attempt_failed", name, number, {"error": failure.to_json()})],
                parent_run_id=run.parent_run_id,
            )
            compensation = compensated_step(name) is not None
            if run.status == RunStatus.CANCELLING:
                change.step_updates.append(
                    StepUpdate(name, StepStatus.CANCELLED, error=failure.to_json(), ended=True)
                )
                await self._settle_cancel(conn, change)
            elif run.status in TERMINAL_RUN_STATUSES or (
                run.status == RunStatus.COMPENSATING and not compensation
            ):
                change.step_updates.append(
                    StepUpdate(name, StepStatus.FAILED, error=failure.to_json(), ended=True)
                )
                if run.status == RunStatus.COMPENSATING:
                    await self._compensate_when_idle(conn, change, defn, run)
            else:
                decision = decide_retry(
                    step.retry or DEFAULT_RETRY_POLICY, number, failure, retry_after_ms
                )
                gives_up = not decision.retry
                completed: list[str] = []
                statuses: dict[str, StepStatus] = {}
                if gives_up and defn.compensates and not compensation:
                    completed = await runs.completed_steps(conn, run.id)
                    if defn.uses_dependencies:  # parallel branches may still run
                        statuses = await runs.step_statuses(conn, run.id)
                self._failed(
                    change, defn, name, number, failure, decision, run.context, completed, statuses
                )
                if gives_up and compensation:
                    await self._continue_compensation(conn, change, defn, run, name, failure)
            handed = self._hand_off(change, offer, attempt_id)
            last_seq = await changes.apply(conn, change)
        await self._after_commit(change)
        return await self._answer(change, handed, run, last_seq)

    async def _fail_as_claimed(
        self,
        attempt_id: uuid.UUID,
        token: str,
        failure: Failure,
        retry_after_ms: int | None,
        claimed: attempts.Claimed,
        offer: HandoffOffer | None,
        reporter: str,
    ) -> ResultDecision | None:
        """`_complete_as_claimed` for a failure: decided from the run as the claim saw it, in
        one statement shared with the results that arrive together. None when that does not
        hold (nothing written)."""
        defn = self._definitions[claimed.workflow_id].definition
        name, number = claimed.step_name, claimed.number
        step = defn.step(name)
        if defn.uses_dependencies or compensated_step(name) is not None or step.attempt_timeout_ms:
            # The general path: readiness, compensations, or the deadline's clock (Postgres').
            return None
        failure = replace(failure, step=name, attempt_number=number)
        decision = decide_retry(step.retry or DEFAULT_RETRY_POLICY, number, failure, retry_after_ms)
        change = RunChange(
            claimed.run_id,
            events=[NewEvent("attempt_failed", name, number, {"error": failure.to_json()})],
        )
        self._failed(change, defn, name, number, failure, decision, claimed.context, ())
        if _needs_compensation(defn, change):
            return None
        handed = self._hand_off(change, offer, attempt_id)
        ended = changes.AttemptEnded(
            change,
            attempt_id,
            token,
            AttemptStatus.FAILED,
            claimed.last_seq,
            reporter,
            error=failure.to_json(),
        )
        return await self._apply_as_claimed(ended, handed, claimed)

    def _failed(
        self,
        change: RunChange,
        defn: WorkflowDef,
        name: str,
        number: int,
        failure: Failure,
        decision: RetryDecision,
        context: dict[str, JSON],
        completed: Sequence[str],
        statuses: dict[str, StepStatus] | None = None,
    ) -> None:
        """What follows a failed attempt of an active run: its retry; or the step fails, and
        its error route, or the run's failure (or compensation), follows. A compensation that
        fails for good is followed by the next one (`_continue_compensation`). `statuses` (the
        run's steps, in a workflow with dependencies that compensates) lets a failing run wait
        for its running branches."""
        compensation = compensated_step(name) is not None
        if decision.retry:
            self._schedule(change, defn, name, number=number + 1, delay_ms=decision.delay_ms)
            change.step_updates.append(
                StepUpdate(
                    name,
                    StepStatus.RETRYING if decision.delay_ms else StepStatus.SCHEDULED,
                    error=failure.to_json(),
                )
            )
            if decision.delay_ms and not compensation:
                change.status = RunStatus.RETRYING
            return
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
        if not compensation:
            plan = planner.after_failure(defn, name, failure, context)
            self._apply_plan(change, defn, plan, context, statuses or {}, completed)

    @retry_conflicts
    async def heartbeat(
        self, worker_id: str, beats: list[tuple[uuid.UUID, str, JSON]]
    ) -> HeartbeatResult:
        async with self._db.connect() as conn:
            alive = await attempts.heartbeat(conn, worker_id, beats)
            progressed = [noted for _, _, noted in alive if noted is not None]
            if progressed:
                await self._note(conn, "attempt_progress", progressed)
        kept = {attempt_id for attempt_id, _, _ in alive}
        return HeartbeatResult(
            cancel=[attempt_id for attempt_id, cancel, _ in alive if cancel],
            lost=[str(attempt_id) for attempt_id, _, _ in beats if str(attempt_id) not in kept],
        )

    async def handoff_offer(self, worker_id: str) -> HandoffOffer | None:
        """What a registered worker can be handed (its queues and handlers), if it is known."""
        async with self._db.connect() as conn:
            return await workers.handoff_offer(conn, worker_id)

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
        return await self._expire(attempts.Expired.LEASE)

    async def expire_deadlines(self) -> int:
        """Fails running attempts that passed their attempt timeout, as timed_out."""
        return await self._expire(attempts.Expired.DEADLINE)

    async def _expire(self, limit: attempts.Expired) -> int:
        async with self._db.connect() as conn:
            expired = await attempts.expired(conn, limit)
        for attempt in expired:
            if limit is attempts.Expired.LEASE:
                failure = Failure(
                    reason=FailureReason.WORKER_LOST,
                    type="WorkerLost",
                    message=f"no heartbeat for {attempt.limit_ms} ms: the worker's lease expired",
                )
            else:
                failure = timed_out(attempt.limit_ms)
            decision = await self.fail_attempt(
                attempt.id, attempt.token, failure, None, expired=limit
            )
            if decision.accepted:
                reason = "lease lost" if limit is attempts.Expired.LEASE else "timed out"
                self._wakeups.stop_attempts([(attempt.worker_id, str(attempt.id))], reason)
        return len(expired)

    async def kick_due(self) -> int:
        """Publishes the retries whose backoff ended and ends the waits that are due."""
        async with self._db.connect() as conn:
            due = await attempts.kick_due(conn)
        return await self._kick(due)

    async def kick_lost(self, dispatch_timeout_ms: int) -> int:
        """Publishes again what was published but never claimed (and ends lost waits)."""
        async with self._db.connect() as conn:
            due = await attempts.kick_lost(conn, dispatch_timeout_ms)
        return await self._kick(due)

    async def republish_unclaimed(self) -> int:
        """Publishes again every task attempt published and not claimed yet: Redis lost them
        (`server.dispatch.loss`). Those published meanwhile may go twice; fencing runs one."""
        async with self._db.connect() as conn:
            before = await attempts.database_now(conn)
        total = 0
        while True:
            async with self._db.connect() as conn:
                due = await attempts.kick_unclaimed(conn, before, _REPUBLISH_BATCH)
            total += await self._kick(due)
            if len(due.tasks) < _REPUBLISH_BATCH:
                return total

    async def _kick(self, due: attempts.Due) -> int:
        if due.tasks:
            await self._publish(due.tasks)
        for attempt_id, token in due.waits:
            await self._end_wait(attempt_id, token)
        return len(due.tasks) + len(due.waits)

    @retry_conflicts
    async def _end_wait(self, attempt_id: uuid.UUID, token: str) -> None:
        """A wait step's timer is due: the step completes and the run moves on."""
        async with self._db.transaction() as conn:
            finished = await attempts.finish(
                conn, attempt_id, token, AttemptStatus.SUCCEEDED, wait=True
            )
            if finished is None:
                return  # ended by another replica, or cancelled with its run
            change = await self._step_succeeded(conn, finished, None)
            change.parent_run_id = finished.run.parent_run_id
            await changes.apply(conn, change)
        await self._after_commit(change)

    async def next_timers(self) -> attempts.NextTimers:
        async with self._db.connect() as conn:
            return await attempts.next_timers(conn)

    async def _refusal(
        self,
        conn: Connection,
        attempt_id: uuid.UUID,
        token: str,
        outcome: AttemptStatus,
        offer: HandoffOffer | None = None,
        reporter: str | None = None,
    ) -> ResultDecision:
        state = await attempts.state(conn, attempt_id)
        if state is None:
            return ResultDecision(accepted=False, refusal_reason="unknown")
        if reporter is not None and state.worker_id not in (None, reporter):
            # Fencing by worker: the right token from another worker or stream does not count.
            return ResultDecision(accepted=False, refusal_reason="not_claimed_by_this_worker")
        if state.token == token and state.status == outcome:
            # A resend of a result already recorded (its answer was lost): hand over again
            # what the first answer handed over, if that attempt still waits for its worker.
            handed = None
            if offer is not None:
                handed = await attempts.handed_off(
                    conn, state.claimed.run_id, attempt_id, offer.worker_id
                )
            if handed is None:
                return ResultDecision(accepted=True)
            if handed.retry_delay_ms is not None:
                return ResultDecision(
                    accepted=True,
                    retry=RetryHandoff(handed.id, handed.token, handed.retry_delay_ms),
                )
            return await self._hand_over(handed.id, handed.token, handed.claimed)
        if state.token != token or not state.is_latest:
            return ResultDecision(accepted=False, refusal_reason="stale")
        return ResultDecision(accepted=False, refusal_reason=f"attempt is {state.status.value}")


def timed_out(timeout_ms: int) -> Failure:
    return Failure(
        reason=FailureReason.TIMED_OUT,
        type="TimedOut",
        message=f"the attempt did not finish within its timeout of {timeout_ms} ms",
    )


def _completed(run_id: uuid.UUID, name: str, number: int, output: JSON) -> RunChange:
    """A change that records a step's completion and nothing else (yet)."""
    return RunChange(
        run_id,
        step_updates=[StepUpdate(name, StepStatus.COMPLETED, output=output, ended=True)],
        events=[NewEvent("step_completed", name, number, {"output": output})],
    )


def _with_output(context: dict[str, JSON], step: Step, output: JSON) -> dict[str, JSON]:
    """The context after a step: task outputs go into it; wait and log steps and
    compensations leave it as it is."""
    if step.kind is not StepKind.TASK or compensated_step(step.name) is not None:
        return context
    return merge_output(context, step, output)


def _needs_compensation(defn: WorkflowDef, change: RunChange) -> bool:
    """Whether a change decided without the run's completed steps fails a run that may have
    steps to compensate (then the general path decides, knowing them)."""
    return defn.compensates and change.status in (RunStatus.FAILED, RunStatus.COMPENSATING)
