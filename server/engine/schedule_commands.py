"""Schedules: registration keeps a workflow's cron triggers as schedules, and the timer loop
of any replica fires their due ticks, each exactly once.

Firing is one transaction per claim of due schedules (FOR UPDATE SKIP LOCKED: no leader, no
in-memory timer): the ticks' decisions are written (UNIQUE schedule + nominal instant), the runs
of those that start are inserted through the engine's start statement with ids derived from
their ticks, and each schedule moves to its next tick. A replica that dies mid-way rolls all of
it back; one that comes late finds the schedule advanced or the tick taken."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from server.engine.core import log
from server.engine.errors import DomainError, NotFound
from server.engine.model import ScheduleOrigin, ScheduleRunOrigin, Trigger, WorkflowDef
from server.engine.run_commands import RunCommands
from server.engine.schedule import Tick, ticks_after
from server.engine.schedule.due_ticks import TickOutcome, plan_due_ticks
from server.store import attempts, changes, schedules
from server.store.changes import RunChange
from server.store.db import Connection, retry_conflicts
from server.store.runs import NewRun
from server.store.schedules import DecidedTick, DueSchedule, ScheduleConfig, StoredSchedule

SCHEDULE_TICK_NAMESPACE = uuid.UUID("8b0b5d0e-6a52-4c1e-9a55-5c4e0f1d7a11")
"""The UUIDv5 namespace of tick run ids (see `tick_run_id`; documented in the proto)."""

ALIVE_KEPT = timedelta(days=7)
"""How long the seconds a timer loop ran in are kept: a tick due earlier and never decided
counts as missed (no loop falls that far behind while it runs)."""

_CLAIM_BATCH = 500
"""Due schedules decided per transaction. 10,000 ticks due at once (bench/schedules.py, herd)
were all decided in 4.2 s with 500, 4.6 s with 100 (each transaction's claim, commit and
after-commit are paid 5 times less often); a transaction is ~0.3 s then."""

_CLAIM_TICKS = 5000
"""Ticks decided per transaction, at most (plus one schedule's): schedules catching up many
ticks each (RUN_ALL decides up to 1,000 per schedule per claim) are left for the next claim
rather than making one transaction of 500,000 decisions."""


def tick_run_id(schedule_id: str, nominal: datetime) -> uuid.UUID:
    """The id of the run a tick starts: UUIDv5 of "<schedule id>\\n<nominal instant as
    YYYY-MM-DDTHH:MM:SSZ>", so that a client can predict it (ticks are whole seconds)."""
    instant = nominal.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return uuid.uuid5(SCHEDULE_TICK_NAMESPACE, f"{schedule_id}\n{instant}")


def definition_schedule_id(workflow: str, trigger: str) -> str:
    return f"{workflow}/{trigger}"


def definition_schedule(workflow: str, trigger: Trigger) -> ScheduleConfig:
    """The schedule a cron trigger of a definition makes (its runs start with an empty
    payload, the trigger's defaults applied at each tick)."""
    assert trigger.cron is not None
    return ScheduleConfig(
        id=definition_schedule_id(workflow, trigger.name),
        workflow=workflow,
        trigger=trigger.name,
        payload={},
        cron_expression=trigger.cron,
        time_zone=trigger.time_zone,
        start_at=_instant(trigger.start_ms),
        end_at=_instant(trigger.end_ms),
        jitter_ms=trigger.jitter_ms,
        skipped_time_policy=trigger.skipped_time_policy,
        repeated_time_policy=trigger.repeated_time_policy,
        catchup_window_ms=trigger.catchup_window_ms,
        missed_tick_policy=trigger.missed_tick_policy,
        max_catchup_runs=trigger.max_catchup_runs,
        overlap_policy=trigger.overlap_policy,
    )


def _instant(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(0, UTC) + timedelta(milliseconds=ms)


def first_tick_after(config: ScheduleConfig, now: datetime) -> Tick | None:
    """The schedule's first tick after `now` (None: its spec has none left)."""
    return next(ticks_after(config.spec(), now, config.id), None)


def tick_at(config: ScheduleConfig, nominal: datetime) -> Tick:
    """The tick of the spec at `nominal` (a tick held or kept since), with its jitter."""
    tick = next(ticks_after(config.spec(), nominal - timedelta(microseconds=1), config.id), None)
    if tick is not None and tick.nominal == nominal:
        return tick
    # The spec changed since (UpdateSchedule): the instant stays the tick's identity.
    return Tick(nominal=nominal, fire_at=nominal, wall_time=nominal.replace(tzinfo=None))


@dataclass(frozen=True)
class _Cancel:
    """CANCEL_OTHER: a run to cancel once the tick that replaces it has committed."""

    run_id: uuid.UUID
    schedule_id: str
    replaced_by: uuid.UUID


class NotLatest(Exception):
    """A run was chosen on a version of its workflow that is no longer the latest: the
    transaction that was to start it rolls back, and is tried again on the latest."""

    def __init__(self, workflows: set[str]) -> None:
        self.workflows = workflows


def _earliest_due(due: list[DueSchedule]) -> datetime:
    """From when the claim's ticks may need to know whether a loop ran: the earliest due tick
    not older than its schedule's catch-up window."""
    if not due:
        return datetime.now(UTC)
    return min(
        max(s.next_nominal_at or s.now, s.now - timedelta(milliseconds=s.config.catchup_window_ms))
        for s in due
    )


class ScheduleCommands(RunCommands):
    _prune_alive_at = 0.0
    """When (monotonic) this replica next forgets old seconds of `timer_alive`."""

    async def _sync_schedules(self, conn: Connection, defn: WorkflowDef) -> float | None:
        """In a new version's registration: its cron triggers' schedules are created, follow
        changed triggers (from the next tick after now; ticks in between are not made up), and
        stop for dropped triggers. Returns when the earliest changed one is due (ms), if any."""
        kept = await schedules.lock_definition_schedules(conn, defn.name)
        now = await attempts.database_now(conn)
        earliest: datetime | None = None
        for trigger in defn.triggers:
            if trigger.cron is None:
                continue
            config = definition_schedule(defn.name, trigger)
            existing = kept.pop(trigger.name, None)
            if existing is not None and existing[0] == config and existing[1] != "stopped":
                continue  # unchanged: ticking (or paused) from where it is
            first = first_tick_after(config, now)
            await schedules.put_definition_schedule(conn, config, first)
            if first is not None and (earliest is None or first.fire_at < earliest):
                earliest = first.fire_at
        dropped = [config.id for config, state in kept.values() if state != "stopped"]
        if dropped:
            await schedules.stop_definition_schedules(conn, dropped)
        return None if earliest is None else (earliest - now) / timedelta(milliseconds=1)

    async def _stored_schedule(
        self, conn: Connection, schedule_id: str, *, lock: bool = False
    ) -> StoredSchedule:
        stored = await schedules.get(conn, schedule_id, lock=lock) if schedule_id else None
        if stored is None:
            raise NotFound(
                f"schedule '{schedule_id}' does not exist",
                reason="SCHEDULE_NOT_FOUND",
                metadata={"schedule_id": schedule_id},
            )
        return stored

    async def fire_due_schedules(self) -> int:
        """Decides every due tick of every due schedule; returns how many were decided."""
        total = 0
        while True:
            async with self._db.connect() as conn:
                await schedules.mark_alive(conn)
                if time.monotonic() >= self._prune_alive_at:
                    await schedules.prune_alive(conn, ALIVE_KEPT)
                    self._prune_alive_at = time.monotonic() + 60
            try:
                decided, claimed, started, cancels = await self._fire_batch()
            except NotLatest as stale:
                for workflow in stale.workflows:
                    self._latest_ids.pop(workflow, None)
                continue  # rolled back: decided again on the latest versions
            with self.tick_runs_usage:  # their log lines and wake-ups
                for change in started:
                    await self._after_commit(change)
            for cancel in cancels:
                await self._cancel_overlapping(cancel)
            total += decided
            if claimed < _CLAIM_BATCH:
                return total

    @retry_conflicts
    async def _fire_batch(self) -> tuple[int, int, list[RunChange], list[_Cancel]]:
        """One transaction: claims due schedules, writes their ticks' decisions and runs, and
        advances them. Returns (ticks decided, schedules claimed, changes of runs started,
        runs to cancel for CANCEL_OTHER)."""
        async with self._db.transaction() as conn:
            due = await schedules.claim_due(conn, _CLAIM_BATCH)
            alive = await schedules.alive_seconds(conn, _earliest_due(due))
            decided: list[DecidedTick] = []
            to_start: dict[tuple[str, datetime], tuple[NewRun, RunChange]] = {}
            moves: list[tuple[DueSchedule, Tick | None, Tick | None]] = []
            cancels: list[_Cancel] = []
            for schedule in due:
                if len(decided) >= _CLAIM_TICKS:  # the rest stay due: the next claim
                    break
                config = schedule.config
                buffered = schedule.buffered_nominal_at
                plan = plan_due_ticks(
                    config.spec(),
                    config.id,
                    schedule.next_nominal_at if schedule.due else None,
                    schedule.now,
                    config.policies(),
                    schedule.last_run_active,
                    alive,
                    tick_at(config, buffered) if buffered else None,
                )
                next_tick = plan.next_tick
                if not schedule.due:  # claimed for its buffered tick: the next one stays
                    kept = schedule.next_nominal_at
                    next_tick = tick_at(config, kept) if kept else None
                moves.append((schedule, next_tick, plan.buffered))
                for decision in plan.decisions:
                    tick, outcome, reason = decision.tick, decision.outcome, decision.reason
                    run_id = None
                    if outcome is TickOutcome.STARTED:
                        try:
                            with self.tick_runs_usage:  # the run's rows, its log steps run
                                new, change = await self._tick_run(schedule, tick)
                        except DomainError as error:  # e.g. a new trigger contract
                            outcome, reason = TickOutcome.FAILED, error.message
                            log.warning(
                                "schedule_tick_failed", schedule=config.id, error=error.message
                            )
                        else:
                            run_id = new.id
                            to_start[(config.id, tick.nominal)] = (new, change)
                            if decision.cancels_last_run and schedule.last_run_id:
                                cancels.append(_Cancel(schedule.last_run_id, config.id, new.id))
                    decided.append(
                        DecidedTick(
                            config.id,
                            tick.nominal,
                            schedule.now,
                            ScheduleRunOrigin.TICK,
                            outcome,
                            run_id,
                            reason,
                        )
                    )
            written = await schedules.record_ticks(conn, decided)
            # A tick decided before (a backfill of it, say) never starts a second run.
            runs_to_start = [item for key, item in to_start.items() if key in written]
            results = await changes.start(conn, runs_to_start)
            stale = {
                new.workflow_name
                for (new, _), result in zip(runs_to_start, results, strict=True)
                if result is changes.NotStarted.NOT_LATEST
            }
            if stale:
                raise NotLatest(stale)  # rolls the whole claim back
            started_ids = {new.id for new, _ in runs_to_start}
            # Decisions are in nominal order per schedule: the last one is the latest.
            last_tick: dict[str, datetime] = {}
            last_run: dict[str, uuid.UUID] = {}
            for d in decided:
                last_tick[d.schedule_id] = d.nominal_at
                if d.run_id is not None and d.run_id in started_ids:
                    last_run[d.schedule_id] = d.run_id
            await schedules.advance(
                conn,
                [
                    schedules.Advance(
                        schedule.config.id,
                        next_tick,
                        last_tick.get(schedule.config.id),
                        last_run.get(schedule.config.id),
                        held.nominal if held else None,
                    )
                    for schedule, next_tick, held in moves
                ],
            )
        if runs_to_start:
            log.debug("schedule_runs_started", count=len(runs_to_start))
        cancels = [c for c in cancels if c.replaced_by in started_ids]
        # Schedules left for the budget count as a full claim: the caller claims again.
        claimed = len(due) if len(moves) == len(due) else _CLAIM_BATCH
        return len(written), claimed, [change for _, change in runs_to_start], cancels

    async def _cancel_overlapping(self, cancel: _Cancel) -> None:
        """CANCEL_OTHER, after the tick's run committed. A crash before this leaves the old run
        running (nothing is lost; the overlap is not prevented)."""
        try:
            await self.cancel_run(
                cancel.run_id,
                f"squidmesh:schedule:{cancel.schedule_id}",
                f"overlap policy CANCEL_OTHER: run {cancel.replaced_by} replaces it",
            )
        except DomainError as error:  # ended meanwhile: nothing to cancel
            log.info(
                "schedule_cancel_other_skipped", run_id=str(cancel.run_id), error=error.message
            )

    async def _tick_run(self, schedule: DueSchedule, tick: Tick) -> tuple[NewRun, RunChange]:
        origin = ScheduleOrigin(
            schedule.config.id, tick.nominal, schedule.now, ScheduleRunOrigin.TICK
        )
        return await self._new_run(
            schedule.config.workflow,
            schedule.config.trigger,
            schedule.config.payload,
            "",
            scheduled=(tick_run_id(schedule.config.id, tick.nominal), origin),
        )
