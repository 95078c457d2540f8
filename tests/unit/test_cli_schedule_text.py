"""What `schedules list|get|preview|backfill` print for people: times in the schedule's zone
(its abbreviation telling the two 02:30 of a fall-back night apart) and in UTC, the spec and
policies in words, who paused it and why, OVERDUE in bold red with how long a tick has been
due, and one row per tick with how it was decided and why it started no run."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from squidmesh.cli import schedule_text
from squidmesh.cli.output import Output
from squidmesh.v1 import run_pb2, schedule_pb2, workflow_pb2
from squidmesh.values import to_struct

# Europe/Paris falls back on 2026-10-25: 02:30 local is 00:30 UTC (CEST), then 01:30 UTC (CET).
FIRST = datetime(2026, 10, 25, 0, 30, tzinfo=UTC)
NOW = (FIRST + timedelta(minutes=5)).astimezone()


def _ts(when: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(when)
    return stamp


def _tick(nominal: datetime, late_s: float = 0, **fields: object) -> schedule_pb2.Tick:
    return schedule_pb2.Tick(
        nominal_time=_ts(nominal),
        fire_time=_ts(nominal + timedelta(seconds=late_s)),
        **fields,  # type: ignore[arg-type]
    )


def nightly() -> schedule_pb2.Schedule:
    return schedule_pb2.Schedule(
        id="report/nightly",
        workflow="report",
        trigger="nightly",
        payload=to_struct({"day": "today"}),
        spec=schedule_pb2.ScheduleSpec(
            cron_expression="30 2 * * *",
            time_zone="Europe/Paris",
            start_time=_ts(datetime(2026, 1, 1, tzinfo=UTC)),
            jitter=duration_pb2.Duration(seconds=90),
            skipped_time_policy=workflow_pb2.SKIPPED_TIME_POLICY_SKIP,
        ),
        catchup_window=duration_pb2.Duration(seconds=7200),
        missed_tick_policy=workflow_pb2.MISSED_TICK_POLICY_RUN_ALL,
        max_catchup_runs=3,
        overlap_policy=workflow_pb2.OVERLAP_POLICY_BUFFER_ONE,
        state=schedule_pb2.SCHEDULE_STATE_PAUSED,
        paused_by="ada",
        pause_note="maintenance",
        source=schedule_pb2.SCHEDULE_SOURCE_DEFINITION,
        health=schedule_pb2.SCHEDULE_HEALTH_OVERDUE,
        etag="7",
        next_ticks=[_tick(FIRST, 90), _tick(FIRST + timedelta(hours=25), 90)],
    )


def test_a_schedule_reads_as_its_spec_policies_state_and_health() -> None:
    lines = dict(
        (line[:14].strip(), (line[14:], style))
        for line, style in schedule_text.schedule_lines(nightly(), NOW)
        if line[:14].strip()
    )
    assert lines["schedule"] == ("report/nightly", "bold")
    assert lines["workflow"][0] == "report (trigger nightly)"
    assert lines["source"][0].startswith("a cron trigger of its workflow: register a new")
    assert lines["payload"][0] == '{"day":"today"}'
    assert lines["spec"][0] == "30 2 * * * in Europe/Paris"
    assert lines["dst"][0] == (
        "a tick at a skipped local time does not fire, "
        "one at a repeated local time fires at its first occurrence"
    )
    assert lines["missed ticks"][0] == (
        "run_all (at most 3 runs), within a catch-up window of 2h 00m"
    )
    assert lines["overlap"][0] == "buffer_one"
    assert lines["state"] == ("paused by ada: maintenance", "magenta")
    assert lines["health"] == (
        "OVERDUE: the tick due 3m 30s ago has not fired: no server's timer loop is running, "
        "or it is behind",
        "bold red",
    )
    bounds = [
        line.strip()
        for line, _ in schedule_text.schedule_lines(nightly(), NOW)
        if line.startswith("              ")
    ]
    assert bounds == ["from 2026-01-01 01:00:00 CET, each tick up to 1m 30s late (jitter)"]


def test_a_schedule_with_defaults_shows_them_in_words() -> None:
    plain = schedule_pb2.Schedule(
        id="s",
        workflow="w",
        spec=schedule_pb2.ScheduleSpec(cron_expression="@hourly"),
        state=schedule_pb2.SCHEDULE_STATE_ACTIVE,
        health=schedule_pb2.SCHEDULE_HEALTH_OK,
    )
    text = "\n".join(line for line, _ in schedule_text.schedule_lines(plain, NOW))
    assert "spec          @hourly in UTC\n" in text
    assert "a skipped local time fires at the end of the gap" in text
    assert "a repeated local time fires at its first occurrence" in text
    assert "missed ticks  unspecified\n" not in text and "missed ticks  skip\n" in text
    assert "overlap       skip\n" in text
    assert "health        ok" in text
    summary, style = schedule_text.schedule_summary(plain, NOW)
    assert (summary, style) == ("s  @hourly in UTC  active", "green")


def test_next_ticks_in_the_zone_and_in_utc(capsys: pytest.CaptureFixture[str]) -> None:
    schedule = nightly()
    Output("text").table(
        schedule_text.next_ticks_table(schedule.next_ticks, schedule.spec.time_zone, NOW)
    )
    header, first, second = capsys.readouterr().out.splitlines()
    assert header.split("  ")[0] == "NOMINAL (Europe/Paris)"
    assert [h.strip() for h in header.split("  ") if h.strip()] == [
        "NOMINAL (Europe/Paris)",
        "NOMINAL (UTC)",
        "FIRES (Europe/Paris)",
        "FIRES (UTC)",
        "IN",
    ]
    assert [c.strip() for c in first.split("  ") if c.strip()] == [
        "2026-10-25 02:30:00 CEST",
        "2026-10-25 00:30:00 UTC",
        "2026-10-25 02:31:30 CEST",
        "2026-10-25 00:31:30 UTC",
        "3m 30s ago",
    ]
    assert second.startswith("2026-10-26 02:30:00 CET ")  # after the clocks went back
    assert second.endswith("in 1d 0h")


def test_next_ticks_of_a_utc_schedule_show_each_time_once(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for zone in ("", "UTC", "Not/A_Zone"):  # a zone this machine lacks: UTC, named so
        Output("text").table(schedule_text.next_ticks_table([_tick(FIRST)], zone, NOW))
        header, row = capsys.readouterr().out.splitlines()
        assert header.split() == ["NOMINAL", "(UTC)", "FIRES", "(UTC)", "IN"]
        assert row.startswith("2026-10-25 00:30:00 UTC  2026-10-25 00:30:00 UTC  5m 00s ago")


def test_decided_ticks_say_how_and_why(capsys: pytest.CaptureFixture[str]) -> None:
    ticks = [
        _tick(
            FIRST,
            2,
            run_id="r-1",
            outcome=schedule_pb2.TICK_OUTCOME_STARTED,
            origin=run_pb2.SCHEDULE_RUN_ORIGIN_TICK,
        ),
        _tick(
            FIRST + timedelta(hours=1),
            outcome=schedule_pb2.TICK_OUTCOME_SKIPPED_OVERLAP,
            origin=run_pb2.SCHEDULE_RUN_ORIGIN_TICK,
            reason="run r-1 was still running",
        ),
        _tick(
            FIRST + timedelta(hours=2),
            run_id="r-3",
            outcome=schedule_pb2.TICK_OUTCOME_STARTED,
            origin=run_pb2.SCHEDULE_RUN_ORIGIN_BACKFILL,
        ),
    ]
    table = schedule_text.ticks_table(ticks, "Europe/Paris")
    assert table.headers == [
        "NOMINAL (Europe/Paris)",
        "FIRED",
        "ORIGIN",
        "OUTCOME",
        "RUN",
        "REASON",
    ]
    assert table.rows[1][3] == ("skipped_overlap", "yellow")
    Output("text").table(table)
    _, started, skipped, backfilled = capsys.readouterr().out.splitlines()
    assert started.split("  ")[:2] == ["2026-10-25 02:30:00 CEST", "2026-10-25 02:30:02 CEST"]
    assert started.split()[-3:] == ["tick", "started", "r-1"]
    assert skipped.startswith("2026-10-25 02:30:00 CET ")  # the second 02:30 of the night
    assert skipped.endswith("tick      skipped_overlap  -    run r-1 was still running")
    assert backfilled.split()[-3:] == ["backfill", "started", "r-3"]


def test_the_list_shows_state_health_and_next_tick(capsys: pytest.CaptureFixture[str]) -> None:
    active = schedule_pb2.Schedule(
        id="ping",
        workflow="ping",
        spec=schedule_pb2.ScheduleSpec(cron_expression="*/5 * * * *"),
        state=schedule_pb2.SCHEDULE_STATE_ACTIVE,
        health=schedule_pb2.SCHEDULE_HEALTH_OK,
        next_ticks=[_tick(FIRST + timedelta(minutes=10))],
    )
    table = schedule_text.schedules_table([nightly(), active], NOW)
    assert table.rows[0][4:6] == [("paused", "magenta"), ("OVERDUE", "bold red")]
    assert table.rows[1][4:6] == [("active", "green"), ("ok", "green")]
    Output("text").table(table)
    header, paused, ticking = capsys.readouterr().out.splitlines()
    assert header.split() == [
        "SCHEDULE",
        "WORKFLOW",
        "CRON",
        "ZONE",
        "STATE",
        "HEALTH",
        "NEXT",
        "TICK",
    ]
    assert "report (nightly)" in paused and "Europe/Paris" in paused
    assert paused.endswith("2026-10-25 02:31:30 CEST (3m 30s ago)")
    assert ticking.split()[7:] == [
        "UTC",
        "active",
        "ok",
        "2026-10-25",
        "00:40:00",
        "UTC",
        "(in",
        "5m",
        "00s)",
    ]
