"""The schedule-time engine: parse a cron spec and compute fire instants in UTC. Pure code.

- `cron_expression`: the expression grammar and matching in naive wall time.
- `fire_times`: time zones, DST policies, start/end bounds, deterministic jitter, preview;
- `due_ticks`: lateness, catch-up window, missed-tick and overlap policies of due ticks.

Why our own iteration rather than croniter (7.0.0, measured with the golden cases in
tests/unit/test_cron_dst.py): croniter handles spring-forward gaps like RUN_AT_GAP_END, but
fires a daily tick twice in a repeated hour (America/New_York `30 1 * * *` on 2024-11-03 at 05:30Z
and 06:30Z; Europe/London `30 1 * * *` on 2024-10-27; Australia/Lord_Howe `45 1 * * *` on
local 2024-04-07), has no skip or last-occurrence policy, and reads a 6th field as seconds LAST.

`due_ticks` (not re-exported: it depends on the model's policies) decides which due ticks of
a stored schedule start runs; `server.engine.schedule_commands` stores and fires them.
"""

from server.engine.schedule.cron_expression import (
    CronExpression,
    InvalidCronExpression,
    parse_cron,
)
from server.engine.schedule.fire_times import (
    InvalidTimeZone,
    RepeatedTimePolicy,
    ScheduleSpec,
    SkippedTimePolicy,
    Tick,
    jitter_offset,
    next_ticks,
    parse_time_zone,
    resolve_wall_time,
    ticks_after,
)

__all__ = [
    "CronExpression",
    "InvalidCronExpression",
    "InvalidTimeZone",
    "RepeatedTimePolicy",
    "ScheduleSpec",
    "SkippedTimePolicy",
    "Tick",
    "jitter_offset",
    "next_ticks",
    "parse_cron",
    "parse_time_zone",
    "resolve_wall_time",
    "ticks_after",
]
