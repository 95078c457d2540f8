"""Runs a schedule starts on request: now (TriggerSchedule, origin MANUAL) and for the ticks of
a past range that were never decided (BackfillSchedule, origin BACKFILL). Each writes its tick
rows and runs in one transaction, under the schedule's row lock, like a tick of the timer loop;
a tick decided once is never decided again, whoever decides it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from server.engine.core import log
from server.engine.errors import FieldViolation, InvalidArgument
from server.engine.model import ScheduleOrigin, ScheduleRunOrigin
from server.engine.run_commands import started_view
from server.engine.schedule import Tick, ticks_after
from server.engine.schedule.due_ticks import TickOutcome
from server.engine.schedule_commands import NotLatest, ScheduleCommands, tick_run_id
from server.engine.views import RunView
from server.store import attempts, changes, schedules
from server.store.changes import RunChange
from server.store.db import retry_conflicts
from server.store.runs import NewRun
from server.store.schedules import DecidedTick, ScheduleConfig, TickRecord

MAX_BACKFILL_TICKS = 1000


@dataclass(frozen=True)
class TriggeredRun:
    run: RunView
    tick: TickRecord


class ScheduleStartCommands(ScheduleCommands):
    # --- trigger, backfill -------------------------------------------------------------------

    async def trigger_schedule(
        self, schedule_id: str, actor: str, idempotency_key: str
    ) -> TriggeredRun:
        """Starts a run now (origin MANUAL), whatever the state and overlap policy. Its tick's
        nominal instant is the trigger's (never a whole second, which a spec's tick may be)."""
        require_actor(actor)
        key = f"{schedule_id}:{idempotency_key}" if idempotency_key else ""
        while True:
            async with self._db.connect() as conn:
                stored = await self._stored_schedule(conn, schedule_id)
            try:
                return await self._trigger(stored.config, actor, key)
            except NotLatest:
                self._latest_ids.pop(stored.config.workflow, None)
            except _KeyTaken as taken:
                async with self._db.connect() as conn:
                    run = await self._existing_run(conn, taken.new)
                    tick = await schedules.tick_of_run(conn, schedule_id, run.id)
                assert tick is not None  # written with the run
                return TriggeredRun(run, tick)

    @retry_conflicts
    async def _trigger(self, config: ScheduleConfig, actor: str, key: str) -> TriggeredRun:
        async with self._db.transaction() as conn:
            await self._stored_schedule(conn, config.id, lock=True)  # not deleted meanwhile
            now = await attempts.database_now(conn)
            nominal = now if now.microsecond else now + timedelta(microseconds=1)
            origin = ScheduleOrigin(config.id, nominal, now, ScheduleRunOrigin.MANUAL)
            new, change = await self._new_run(
                config.workflow,
                config.trigger,
                config.payload,
                key,
                scheduled=(uuid.uuid4(), origin),
            )
            tick = DecidedTick(
                config.id,
                nominal,
                now,
                ScheduleRunOrigin.MANUAL,
                TickOutcome.STARTED,
                new.id,
                f"triggered by {actor}",
            )
            await schedules.record_ticks(conn, [tick])
            (result,) = await changes.start(conn, [(new, change)])
            if result is changes.NotStarted.KEY_TAKEN:
                raise _KeyTaken(new)  # rolls the tick back
            if result is changes.NotStarted.NOT_LATEST:
                raise NotLatest({config.workflow})
        await self._after_commit(change)
        log.info("schedule_triggered", schedule=config.id, run_id=str(new.id), actor=actor)
        view = started_view(new, change, result)
        record = TickRecord(nominal, now, new.id, tick.origin, tick.outcome, tick.reason)
        return TriggeredRun(view, record)

    async def backfill_schedule(
        self, schedule_id: str, start: datetime, end: datetime, actor: str
    ) -> tuple[list[TickRecord], int]:
        """Starts a run (origin BACKFILL) for each tick of the spec in [start, end] not decided
        yet; returns every tick of the range as it now stands, and how many this call started."""
        require_actor(actor)
        problems = []
        if end < start:
            problems.append(FieldViolation("end_time", "must not be before start_time"))
        while True:
            async with self._db.connect() as conn:
                stored = await self._stored_schedule(conn, schedule_id)
                now = await attempts.database_now(conn)
            if end > now:
                problems.append(
                    FieldViolation("end_time", "must not be in the future (ticks to come fire)")
                )
            if problems:
                raise InvalidArgument("invalid backfill range", problems)
            ticks = _ticks_between(stored.config, start, end)
            try:
                return await self._backfill(stored.config, ticks, start, end, actor)
            except NotLatest:
                self._latest_ids.pop(stored.config.workflow, None)

    @retry_conflicts
    async def _backfill(
        self, config: ScheduleConfig, ticks: list[Tick], start: datetime, end: datetime, actor: str
    ) -> tuple[list[TickRecord], int]:
        async with self._db.transaction() as conn:
            await self._stored_schedule(conn, config.id, lock=True)
            decided = await schedules.decided_between(conn, config.id, start, end)
            now = await attempts.database_now(conn)
            to_start: list[tuple[NewRun, RunChange]] = []
            new_ticks: list[DecidedTick] = []
            for tick in ticks:
                if tick.nominal in decided:
                    continue
                origin = ScheduleOrigin(config.id, tick.nominal, now, ScheduleRunOrigin.BACKFILL)
                new, change = await self._new_run(
                    config.workflow,
                    config.trigger,
                    config.payload,
                    "",
                    scheduled=(tick_run_id(config.id, tick.nominal), origin),
                )
                to_start.append((new, change))
                new_ticks.append(
                    DecidedTick(
                        config.id,
                        tick.nominal,
                        now,
                        ScheduleRunOrigin.BACKFILL,
                        TickOutcome.STARTED,
                        new.id,
                        f"backfilled by {actor}",
                    )
                )
            await schedules.record_ticks(conn, new_ticks)
            results = await changes.start(conn, to_start)
            if any(r is changes.NotStarted.NOT_LATEST for r in results):
                raise NotLatest({config.workflow})
        for _, change in to_start:
            await self._after_commit(change)
        log.info("schedule_backfilled", schedule=config.id, started=len(to_start), actor=actor)
        started = {
            t.nominal_at: TickRecord(t.nominal_at, now, t.run_id, t.origin, t.outcome, t.reason)
            for t in new_ticks
        }
        return [started.get(t.nominal) or decided[t.nominal] for t in ticks], len(started)


class _KeyTaken(Exception):
    def __init__(self, new: NewRun) -> None:
        self.new = new


def _ticks_between(config: ScheduleConfig, start: datetime, end: datetime) -> list[Tick]:
    ticks: list[Tick] = []
    for tick in ticks_after(config.spec(), start - timedelta(microseconds=1), config.id):
        if tick.nominal > end:
            break
        if len(ticks) == MAX_BACKFILL_TICKS:
            raise InvalidArgument(
                f"the range holds more than {MAX_BACKFILL_TICKS} ticks; backfill it in parts",
                [FieldViolation("end_time", f"at most {MAX_BACKFILL_TICKS} ticks per backfill")],
            )
        ticks.append(tick)
    return ticks


def require_actor(actor: str) -> None:
    if not actor:
        raise InvalidArgument(
            "actor is required (who sends the command)",
            [FieldViolation("actor", "must not be empty")],
        )
