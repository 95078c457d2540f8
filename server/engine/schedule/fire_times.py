"""When a schedule fires: cron matches in a time zone's wall time, turned into UTC instants.

A schedule follows the wall clock of its zone. Daylight-saving time is a policy, not an accident:
- a matched wall time that does not exist (spring forward; Pacific/Apia skipped all of
  2011-12-30) fires at the first valid instant after the gap — the transition itself — by default
  (`SkippedTimePolicy.RUN_AT_GAP_END`, as Vixie cron does), or not at all (`SKIP`);
- a matched wall time that occurs twice (fall back) fires once: at its first occurrence by default
  (`RepeatedTimePolicy.FIRST`), or at its last (`LAST`). A sub-hourly schedule therefore pauses
  for the repeated hour's second pass; a schedule that must fire at even intervals uses UTC.
Several matches that resolve to one instant (every wall time in a gap, plus the first one after
it) are one tick. A tick's identity is its nominal UTC instant; jitter moves only when it fires.

Pure code (zoneinfo, hashlib); the engine stores and claims ticks elsewhere.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from server.engine.schedule.cron_expression import CronExpression

# Wide enough to see both sides of any transition around an instant (Apia moved by a day).
_OFFSET_WINDOW = timedelta(days=2)

# Ticks lie between these: far enough for any schedule, and clear of the limits of datetime
# (years 1 and 9999), which offsets, the search horizon and jitter would otherwise cross.
FIRST_INSTANT = datetime(1900, 1, 1, tzinfo=UTC)
LAST_INSTANT = datetime(9000, 1, 1, tzinfo=UTC)


class SkippedTimePolicy(StrEnum):
    RUN_AT_GAP_END = "run_at_gap_end"
    SKIP = "skip"


class RepeatedTimePolicy(StrEnum):
    FIRST = "first"
    LAST = "last"


class InvalidTimeZone(ValueError):
    """Not an IANA time zone name; the message is ready for a field violation."""


def parse_time_zone(name: str) -> ZoneInfo:
    """The zone named `name`; empty means UTC."""
    try:
        return ZoneInfo(name or "UTC")
    # A name too long for a file, or naming a directory, is an OSError; `../x` a ValueError.
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise InvalidTimeZone(f"{name!r} is not an IANA time zone") from None


@dataclass(frozen=True)
class ScheduleSpec:
    expression: CronExpression
    zone: ZoneInfo
    start: datetime | None = None
    """No tick before this instant (inclusive bound)."""
    end: datetime | None = None
    """No tick after this instant (inclusive bound)."""
    jitter: timedelta = timedelta(0)
    skipped_time: SkippedTimePolicy = SkippedTimePolicy.RUN_AT_GAP_END
    repeated_time: RepeatedTimePolicy = RepeatedTimePolicy.FIRST


@dataclass(frozen=True)
class Tick:
    nominal: datetime
    """UTC instant the expression names; with the schedule id, the tick's identity."""
    fire_at: datetime
    """`nominal` plus the schedule's deterministic jitter; before the next tick's nominal."""
    wall_time: datetime
    """The (naive) local wall time the expression matched, e.g. 02:30 even when shifted."""


def resolve_wall_time(
    wall: datetime, zone: ZoneInfo, skipped: SkippedTimePolicy, repeated: RepeatedTimePolicy
) -> datetime | None:
    """The UTC instant a matched wall time fires at under the DST policies, or None (skipped)."""
    return _resolve(wall, zone, skipped, repeated)[0]


def _resolve(
    wall: datetime, zone: ZoneInfo, skipped: SkippedTimePolicy, repeated: RepeatedTimePolicy
) -> tuple[datetime | None, datetime | None]:
    """`resolve_wall_time`'s answer and, for a wall time in a gap, the wall time the gap ends
    at: every wall time before it resolves to the same answer."""
    earlier_offset = wall.replace(tzinfo=zone, fold=0)
    later_offset = wall.replace(tzinfo=zone, fold=1)
    first = earlier_offset.astimezone(UTC)
    if earlier_offset.utcoffset() == later_offset.utcoffset():
        return first, None
    second = later_offset.astimezone(UTC)
    if first.astimezone(zone).replace(tzinfo=None) == wall:
        # Repeated: fold=0 is the first occurrence (PEP 495).
        return (first if repeated is RepeatedTimePolicy.FIRST else second), None
    # In a gap, fold=1 (offset after) lands before the transition and fold=0 (offset before)
    # at or after it.
    transition = _transition_between(zone, second, first)
    gap_end = transition.astimezone(zone).replace(tzinfo=None)
    return (None if skipped is SkippedTimePolicy.SKIP else transition), gap_end


def _transition_between(zone: ZoneInfo, before: datetime, after: datetime) -> datetime:
    """The first instant in (before, after] with `after`'s UTC offset, to the second."""
    target = after.astimezone(zone).utcoffset()
    low, high = before, after
    while high - low > timedelta(seconds=1):
        middle = low + (high - low) / 2
        middle = middle.replace(microsecond=0)
        if middle.astimezone(zone).utcoffset() == target:
            high = middle
        else:
            low = middle
    return high


def ticks_after(spec: ScheduleSpec, after: datetime, schedule_id: str) -> Iterator[Tick]:
    """Ticks whose nominal instant is strictly after `after` (aware), in order, within bounds."""
    nominals = _nominal_instants(spec, after)
    if spec.jitter <= timedelta(0):
        # Each tick fires at its nominal instant: the next one (the jitter's room) is not
        # needed to yield this one. Deciding a due tick computed three ticks instead of two.
        for wall, nominal in nominals:
            yield Tick(nominal=nominal, fire_at=nominal, wall_time=wall)
        return
    current = next(nominals, None)
    while current is not None:
        wall, nominal = current
        following = next(nominals, None)
        room = None if following is None else following[1] - nominal
        fire_at = nominal + jitter_offset(schedule_id, nominal, spec.jitter, room)
        yield Tick(nominal=nominal, fire_at=fire_at, wall_time=wall)
        current = following


def next_ticks(spec: ScheduleSpec, after: datetime, count: int, schedule_id: str) -> list[Tick]:
    """The next `count` ticks after `after` (fewer when the schedule ends): the preview."""
    ticks: list[Tick] = []
    for tick in ticks_after(spec, after, schedule_id):
        if len(ticks) == count:
            break
        ticks.append(tick)
    return ticks


def _nominal_instants(spec: ScheduleSpec, after: datetime) -> Iterator[tuple[datetime, datetime]]:
    if spec.start is not None and spec.start > after:
        after = spec.start - timedelta(microseconds=1)
    after = max(after.astimezone(UTC), FIRST_INSTANT)
    if after >= LAST_INSTANT:
        return
    # Resolution is monotonic in wall time, so start from a wall time that resolves no later
    # than `after`: shifting by the smallest nearby offset guarantees it, even in a repeated
    # hour under LAST or just before a gap.
    smallest_offset = min(
        _utc_offset(spec.zone, at) for at in (after - _OFFSET_WINDOW, after, after + _OFFSET_WINDOW)
    )
    wall: datetime | None = (after + smallest_offset).replace(tzinfo=None)
    previous: datetime | None = None
    while wall is not None:
        wall = spec.expression.next_match(wall)
        if wall is None:
            return
        nominal, gap_end = _resolve(wall, spec.zone, spec.skipped_time, spec.repeated_time)
        wall_matched, wall = wall, wall + timedelta(seconds=1)
        if gap_end is not None:
            # The gap's other matches resolve to nothing or to this instant again: a
            # per-second schedule would search the transition once for each of them.
            wall = max(wall, gap_end)
        if nominal is None or nominal <= after or nominal == previous:
            continue
        if (spec.end is not None and nominal > spec.end) or nominal > LAST_INSTANT:
            return
        previous = nominal
        yield wall_matched, nominal


def _utc_offset(zone: ZoneInfo, at: datetime) -> timedelta:
    offset = at.astimezone(zone).utcoffset()
    assert offset is not None  # A ZoneInfo always knows its offset at an aware instant.
    return offset


def jitter_offset(
    schedule_id: str, nominal: datetime, jitter: timedelta, room: timedelta | None
) -> timedelta:
    """A delay in [0, jitter) derived from (schedule, tick), strictly less than `room` (the
    time to the next tick; None for the last tick). Same inputs, same delay, on every replica."""
    bound = jitter if room is None else min(jitter, room)
    bound_us = bound // timedelta(microseconds=1)
    if bound_us <= 0:
        return timedelta(0)
    digest = hashlib.sha256(f"{schedule_id}\n{nominal.isoformat()}".encode()).digest()
    # Integer arithmetic keeps the result strictly below the bound (a float could round up).
    fraction_53 = int.from_bytes(digest[:8], "big") >> 11
    return timedelta(microseconds=(fraction_53 * bound_us) >> 53)
