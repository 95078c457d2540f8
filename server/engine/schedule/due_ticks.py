"""Which due ticks of a schedule start a run: lateness, the catch-up window, the missed-tick
policy and the overlap policy, decided together. Pure code; the engine writes the decisions.

A tick is due once its fire time (nominal + jitter) has passed. Whether a timer loop was alive
when it fell due says why it was not decided then (`AliveSeconds`: the seconds in which some
replica's loop ran):
- a loop was alive within `ON_TIME_GRACE` after its fire time: on time, however late it is
  decided now (a loop busy with 10,000 ticks due at once is late, not absent); it runs;
- no loop was: missed while no server ran, and within the catch-up window the missed-tick
  policy decides (SKIP: none run; RUN_LATEST: the latest runs; RUN_ALL: the latest
  `max_catchup_runs` run);
- nominal instant before the window: missed for good, whatever the policy. These are not
  enumerated (a per-second schedule down for a week has 600,000): one decision, on the first
  of them, stands for all of them up to the window.
Then the overlap policy, while the schedule's last run is active: SKIP starts nothing;
BUFFER_ONE holds the first such tick (the plan's `buffered`, kept on the schedule) until that run
has ended, and skips the others while one is held; ALLOW_ALL starts them; CANCEL_OTHER starts
them and asks the engine to cancel the active run. A held tick whose run has ended starts first.
Ticks decided together are one decision (RUN_ALL asks for all of them): they do not skip one
another. Every tick that starts nothing is decided with its reason, so it is recorded.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from server.engine.model import MissedTickPolicy, OverlapPolicy
from server.engine.schedule.fire_times import ScheduleSpec, Tick, ticks_after

ON_TIME_GRACE = timedelta(seconds=2)
"""A tick is on time if a timer loop ran within this after it fell due (loops run at least
once a second while alive); GetSchedule calls a schedule OVERDUE when its tick is this late."""


@dataclass(frozen=True)
class AliveSeconds:
    """The whole epoch seconds in which some replica's timer loop ran (recorded in Postgres)."""

    seconds: frozenset[int]

    def at(self, fire_at: datetime) -> bool:
        """Whether a loop ran between `fire_at` and `ON_TIME_GRACE` after it (to the second: a
        tick at a whole second, as unjittered ticks are, is judged exactly)."""
        first = math.floor(fire_at.timestamp())
        last = math.floor((fire_at + ON_TIME_GRACE).timestamp())
        return any(second in self.seconds for second in range(first, last + 1))


MAX_TICKS_PER_PLAN = 1000
"""Due ticks decided per schedule per claim; the rest stay due for the next claim."""


class TickOutcome(StrEnum):
    STARTED = "started"
    SKIPPED_OVERLAP = "skipped_overlap"
    SKIPPED_MISSED = "skipped_missed"
    FAILED = "failed"
    """It was to start a run, and could not (the engine decides this one)."""
    SKIPPED_PAUSED = "skipped_paused"
    """Due while the schedule was paused (recorded on resume, for all of them)."""


@dataclass(frozen=True)
class TickPolicies:
    catchup_window: timedelta
    missed: MissedTickPolicy
    max_catchup_runs: int
    overlap: OverlapPolicy


@dataclass(frozen=True)
class TickDecision:
    tick: Tick
    outcome: TickOutcome
    reason: str = ""
    cancels_last_run: bool = False
    """CANCEL_OTHER: the schedule's active last run is to be cancelled for this one."""


@dataclass(frozen=True)
class DuePlan:
    decisions: list[TickDecision]
    """In nominal order."""
    next_tick: Tick | None
    """The first tick not decided (not due yet, or beyond MAX_TICKS_PER_PLAN); None when the
    spec has none left."""
    buffered: Tick | None = None
    """BUFFER_ONE: the tick held until the active run ends (None: none held)."""


def plan_due_ticks(
    spec: ScheduleSpec,
    schedule_id: str,
    next_nominal: datetime | None,
    now: datetime,
    policies: TickPolicies,
    last_run_active: bool,
    alive: AliveSeconds,
    buffered: Tick | None = None,
) -> DuePlan:
    """Decides the schedule's ticks due at `now`, from the one at `next_nominal` on
    (`next_nominal` None: none; only a held `buffered` tick may start)."""
    overlap = _Overlap(policies.overlap, last_run_active, buffered)
    if next_nominal is None:
        return DuePlan(overlap.release(), None, overlap.buffered)
    window_start = now - policies.catchup_window
    decisions: list[TickDecision] = []
    after = next_nominal - timedelta(microseconds=1)
    ticks = ticks_after(spec, after, schedule_id)
    first = next(ticks, None)
    if first is not None:
        ticks = itertools.chain([first], ticks)  # not computed twice
    if first is not None and first.nominal < window_start:
        decisions.append(
            TickDecision(
                first,
                TickOutcome.SKIPPED_MISSED,
                f"missed while no server ran: this tick and any after it up to "
                f"{window_start.isoformat()} are older than the catch-up window "
                f"({policies.catchup_window})",
            )
        )
        after = max(first.nominal, window_start - timedelta(microseconds=1))
        ticks = ticks_after(spec, after, schedule_id)
    on_time: list[Tick] = []
    missed: list[Tick] = []
    next_tick: Tick | None = None
    for tick in ticks:
        if tick.fire_at > now or len(on_time) + len(missed) == MAX_TICKS_PER_PLAN:
            next_tick = tick
            break
        (on_time if alive.at(tick.fire_at) else missed).append(tick)
    to_run = _missed_to_run(missed, policies)
    decisions += [
        TickDecision(tick, TickOutcome.SKIPPED_MISSED, _missed_reason(policies))
        for tick in missed
        if tick not in to_run
    ]
    decisions += overlap.release()
    for tick in sorted([*to_run, *on_time], key=lambda t: t.nominal):
        decision = overlap.decide(tick)
        if decision is not None:
            decisions.append(decision)
    decisions.sort(key=lambda d: d.tick.nominal)
    return DuePlan(decisions, next_tick, overlap.buffered)


def _missed_to_run(missed: list[Tick], policies: TickPolicies) -> list[Tick]:
    if policies.missed is MissedTickPolicy.RUN_LATEST:
        return missed[-1:]
    if policies.missed is MissedTickPolicy.RUN_ALL:
        return missed[-policies.max_catchup_runs :] if policies.max_catchup_runs else []
    return []


def _missed_reason(policies: TickPolicies) -> str:
    if policies.missed is MissedTickPolicy.SKIP:
        return "missed while no server ran (missed-tick policy SKIP)"
    if policies.missed is MissedTickPolicy.RUN_LATEST:
        return "missed while no server ran; only the latest missed tick runs (RUN_LATEST)"
    return (
        f"missed while no server ran; only the latest {policies.max_catchup_runs} missed "
        "ticks run (RUN_ALL, max_catchup_runs)"
    )


class _Overlap:
    """The overlap policy over one plan: whether a run the schedule started before is active
    (runs the plan starts do not count: ticks decided together do not skip one another), and
    the tick held (BUFFER_ONE)."""

    def __init__(self, policy: OverlapPolicy, active: bool, buffered: Tick | None) -> None:
        self._policy = policy
        self._active = active
        self.buffered = buffered

    def release(self) -> list[TickDecision]:
        """The held tick starts once the run it waited for has ended."""
        if self.buffered is None or self._active:
            return []
        tick, self.buffered, self._active = self.buffered, None, True
        return [TickDecision(tick, TickOutcome.STARTED)]

    def decide(self, tick: Tick) -> TickDecision | None:
        """The tick's decision; None when it is held (BUFFER_ONE)."""
        policy = self._policy
        if not self._active or policy is OverlapPolicy.ALLOW_ALL:
            return TickDecision(tick, TickOutcome.STARTED)
        if policy is OverlapPolicy.CANCEL_OTHER:
            return TickDecision(tick, TickOutcome.STARTED, cancels_last_run=True)
        if policy is OverlapPolicy.BUFFER_ONE:
            if self.buffered is None:
                self.buffered = tick
                return None
            return TickDecision(
                tick,
                TickOutcome.SKIPPED_OVERLAP,
                "the schedule's previous run is still active and a tick is already buffered "
                "(overlap policy BUFFER_ONE)",
            )
        return TickDecision(
            tick,
            TickOutcome.SKIPPED_OVERLAP,
            "the schedule's previous run is still active (overlap policy SKIP)",
        )
