"""Cron expressions: parsing and matching in naive local wall time.

Accepted forms:
- five fields, as in Vixie cron: `minute hour day-of-month month day-of-week`;
- six fields with SECONDS FIRST, as in Quartz, Spring and robfig/cron (`second minute hour
  day-of-month month day-of-week`). croniter puts seconds last by default; we do not, so that
  `*/10 * * * * *` reads the way most schedulers write it;
- the shorthands `@yearly`/`@annually`, `@monthly`, `@weekly`, `@daily`/`@midnight`, `@hourly`.

Each field is `*`, a number, a range `a-b`, a step `*/s`, `a-b/s` or `a/s` (from a to the field's
maximum), or a comma-separated list of these. Months accept `jan`..`dec`, days of week `sun`..`sat`
(case-insensitive); day-of-week 0 and 7 are both Sunday. Quartz extensions (`?`, `L`, `W`, `#`) are
refused with a message rather than guessed at.

Day-of-month and day-of-week combine as in Vixie cron: when both are restricted, a day matches if
EITHER matches; when either field starts with `*` (so `*/2` counts as unrestricted, as in Vixie),
both must match.

Pure code: matching works on naive datetimes in the schedule's wall time; time zones and DST are
the business of `fire_times`.
"""

from __future__ import annotations

import calendar
import functools
from dataclasses import dataclass
from datetime import datetime, timedelta

SHORTHANDS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

MONTH_NAMES = {name.lower(): i for i, name in enumerate(calendar.month_abbr) if name}
DAY_NAMES = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}

# An expression that matches nothing within this many years is exhausted. `parse_cron` refuses
# expressions that can never match; the rarest it accepts (Feb 29 on one weekday) recurs well
# within this horizon.
SEARCH_HORIZON_YEARS = 50


class InvalidCronExpression(ValueError):
    """The expression cannot be parsed; the message says why, for a field violation."""


@dataclass(frozen=True)
class _FieldRange:
    name: str
    low: int
    high: int
    names: dict[str, int]


_SECOND = _FieldRange("second", 0, 59, {})
_MINUTE = _FieldRange("minute", 0, 59, {})
_HOUR = _FieldRange("hour", 0, 23, {})
_DAY_OF_MONTH = _FieldRange("day-of-month", 1, 31, {})
_MONTH = _FieldRange("month", 1, 12, MONTH_NAMES)
# 7 is accepted as Sunday and folded onto 0 after parsing.
_DAY_OF_WEEK = _FieldRange("day-of-week", 0, 7, DAY_NAMES)


@dataclass(frozen=True)
class CronExpression:
    """A parsed expression: the allowed values of each field, and the day-combining rule."""

    text: str
    seconds: tuple[int, ...]
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days_of_month: frozenset[int]
    months: tuple[int, ...]
    days_of_week: frozenset[int]
    """0 = Sunday .. 6 = Saturday."""
    days_are_either: bool
    """True when both day fields are restricted: a day matches if either field does (Vixie)."""

    def day_matches(self, year: int, month: int, day: int) -> bool:
        # datetime.weekday() is Monday=0; cron is Sunday=0.
        weekday = (calendar.weekday(year, month, day) + 1) % 7
        by_month_day = day in self.days_of_month
        by_week_day = weekday in self.days_of_week
        if self.days_are_either:
            return by_month_day or by_week_day
        return by_month_day and by_week_day

    def next_match(self, wall: datetime) -> datetime | None:
        """The first wall time at or after `wall` (naive, whole seconds) that matches, or None
        when nothing matches within the search horizon."""
        t = wall.replace(microsecond=0)
        if t < wall:
            t += timedelta(seconds=1)
        horizon = t.year + SEARCH_HORIZON_YEARS
        while t.year <= horizon:
            if t.month not in self.months:
                month = _next_value(self.months, t.month)
                t = (
                    datetime(t.year, month, 1)
                    if month is not None
                    else datetime(t.year + 1, self.months[0], 1)
                )
                continue
            if not self.day_matches(t.year, t.month, t.day):
                t = datetime(t.year, t.month, t.day) + timedelta(days=1)
                continue
            hour = _next_value(self.hours, t.hour)
            if hour is None:
                t = datetime(t.year, t.month, t.day) + timedelta(days=1)
                continue
            if hour != t.hour:
                t = t.replace(hour=hour, minute=0, second=0)
            minute = _next_value(self.minutes, t.minute)
            if minute is None:
                t = t.replace(minute=0, second=0) + timedelta(hours=1)
                continue
            if minute != t.minute:
                t = t.replace(minute=minute, second=0)
            second = _next_value(self.seconds, t.second)
            if second is None:
                t = t.replace(second=0) + timedelta(minutes=1)
                continue
            return t.replace(second=second)
        return None


def _next_value(allowed: tuple[int, ...], at_least: int) -> int | None:
    for value in allowed:
        if value >= at_least:
            return value
    return None


@functools.lru_cache(maxsize=4096)
def parse_cron(text: str) -> CronExpression:
    """Parse `text`; raises InvalidCronExpression with a message naming the faulty field.
    Cached (an expression is immutable): the timer loop reads each due schedule's spec at
    every claim. A refused expression is not cached."""
    stripped = text.strip()
    if not stripped:
        raise InvalidCronExpression("is empty")
    if stripped.startswith("@"):
        expanded = SHORTHANDS.get(stripped.lower())
        if expanded is None:
            known = ", ".join(sorted(SHORTHANDS))
            raise InvalidCronExpression(f"unknown shorthand {stripped!r}; use one of {known}")
        fields = ["0", *expanded.split()]
    else:
        fields = stripped.split()
        if len(fields) == 5:
            fields = ["0", *fields]
        elif len(fields) != 6:
            raise InvalidCronExpression(
                f"has {len(fields)} fields; expected 5 (minute hour day-of-month month "
                "day-of-week), 6 with seconds first, or a shorthand such as @daily"
            )
    second, minute, hour, dom, month, dow = fields
    days_of_week = frozenset(v % 7 for v in _parse_field(dow, _DAY_OF_WEEK))
    expression = CronExpression(
        text=text,
        seconds=tuple(sorted(_parse_field(second, _SECOND))),
        minutes=tuple(sorted(_parse_field(minute, _MINUTE))),
        hours=tuple(sorted(_parse_field(hour, _HOUR))),
        days_of_month=frozenset(_parse_field(dom, _DAY_OF_MONTH)),
        months=tuple(sorted(_parse_field(month, _MONTH))),
        days_of_week=days_of_week,
        days_are_either=not dom.startswith("*") and not dow.startswith("*"),
    )
    _check_some_day_exists(expression)
    return expression


def _parse_field(text: str, field: _FieldRange) -> set[int]:
    values: set[int] = set()
    for part in text.split(","):
        if not part:
            raise InvalidCronExpression(f"{field.name} field {text!r} has an empty list item")
        values.update(_parse_part(part, field))
    return values


def _parse_part(part: str, field: _FieldRange) -> range:
    base, slash, step_text = part.partition("/")
    step = 1
    if slash:
        if not step_text.isdigit() or int(step_text) == 0:
            raise InvalidCronExpression(
                f"{field.name} step {step_text!r} in {part!r} must be a positive integer"
            )
        step = int(step_text)
    if base == "*":
        return range(field.low, field.high + 1, step)
    low_text, dash, high_text = base.partition("-")
    low = _parse_value(low_text, field, part)
    if dash:
        high = _parse_value(high_text, field, part)
        if high < low:
            raise InvalidCronExpression(
                f"{field.name} range {base!r} runs backwards; write it as a list instead"
            )
    else:
        # `a/s` runs from a to the field's maximum, as in Vixie cron and croniter.
        high = field.high if slash else low
    return range(low, high + 1, step)


def _parse_value(text: str, field: _FieldRange, part: str) -> int:
    named = field.names.get(text.lower())
    if named is not None:
        return named
    if not text.isdigit():
        if text in {"?", "L", "W"} or "#" in text or text.upper().endswith(("L", "W")):
            raise InvalidCronExpression(
                f"{field.name} {part!r} uses a Quartz extension, which is not supported"
            )
        raise InvalidCronExpression(f"{field.name} {part!r} is not a number")
    value = int(text)
    if not field.low <= value <= field.high:
        raise InvalidCronExpression(
            f"{field.name} {value} is out of range {field.low}-{field.high}"
        )
    return value


def _check_some_day_exists(expression: CronExpression) -> None:
    """Refuse `0 0 30 2 *` and the like, which would never fire."""
    if expression.days_are_either:
        return  # Every weekday occurs in every month.
    # February counts as 29 days: Feb 29 fires in leap years.
    longest = max(calendar.monthrange(2024, month)[1] for month in expression.months)
    if min(expression.days_of_month) > longest:
        months = ",".join(str(m) for m in expression.months)
        raise InvalidCronExpression(
            f"day-of-month {min(expression.days_of_month)} never occurs in month(s) {months}"
        )
