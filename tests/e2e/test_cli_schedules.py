"""`squidmesh schedules ...` as a user runs it against a real server: a workflow's cron trigger
listed, shown, paused and resumed (who and why), triggered (idempotent by key, watched),
previewed (a saved schedule, and a bare spec across a DST gap), backfilled (a tick decided
once: a second backfill starts nothing), its recent ticks shown with their origins, and the runs
it started found by `runs list --schedule`. The workflow's only step is a log step, run by the
server: no worker is needed."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

from tests.e2e.conftest import Cluster
from tests.e2e.test_cli import squidmesh
from worker_sdk import Field, Workflow

SCHEDULE = "cli-report/nightly"


def report() -> Workflow:
    """A daily cron trigger at 12:00 in Europe/Paris, and one log step."""
    wf = Workflow("cli-report")
    wf.trigger(
        "nightly",
        cron="0 12 * * *",
        time_zone="Europe/Paris",
        payload=[Field("day", "string", default="today")],
        overlap="allow_all",
    )
    wf.log("write", "report for {day}")
    return wf


def rows(stdout: str) -> list[list[str]]:
    """A piped table's rows (after its header), each split on the two spaces between columns."""
    return [re.split(r"  +", line.strip()) for line in stdout.splitlines()[1:]]


def test_list_get_pause_resume_trigger_preview_and_backfill(cluster: Cluster) -> None:
    server = cluster.start_server()
    address = server.address
    with cluster.client() as client:
        client.register_workflow(report())

    listed = squidmesh(address, "schedules", "list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[0].split() == [
        "SCHEDULE", "WORKFLOW", "CRON", "ZONE", "STATE", "HEALTH", "NEXT", "TICK"
    ]  # fmt: skip
    (row,) = rows(listed.stdout)
    assert row[:6] == [
        SCHEDULE,
        "cli-report (nightly)",
        "0 12 * * *",
        "Europe/Paris",
        "active",
        "ok",
    ]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d 12:00:00 CES?T \(in .+\)", row[6]), row[6]
    assert rows(squidmesh(address, "schedules", "list", "--state", "paused").stdout) == []

    shown = squidmesh(address, "schedules", "get", SCHEDULE)
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"^spec +0 12 \* \* \* in Europe/Paris$", shown.stdout, re.M)
    assert re.search(r"^overlap +allow_all$", shown.stdout, re.M)
    assert re.search(r"^state +active$", shown.stdout, re.M)
    assert re.search(r"^health +ok$", shown.stdout, re.M)
    next_ticks = shown.stdout.split("next ticks\n", 1)[1].split("\n\n", 1)[0]
    assert next_ticks.splitlines()[0].split() == [
        "NOMINAL", "(Europe/Paris)", "NOMINAL", "(UTC)", "FIRES", "(Europe/Paris)", "FIRES",
        "(UTC)", "IN",
    ]  # fmt: skip
    ticks = rows(next_ticks)
    assert len(ticks) == 5 and all(
        t[0].endswith((" 12:00:00 CET", " 12:00:00 CEST")) for t in ticks
    )
    assert "recent ticks\n  none decided yet" in shown.stdout

    # Pause and resume: who and why, shown by get and by the list's filter.
    paused = squidmesh(
        address, "schedules", "pause", SCHEDULE, "--note", "db migration", "--actor", "ann"
    )
    assert paused.returncode == 0, paused.stderr
    assert paused.stdout.strip().endswith("paused by ann: db migration")
    assert re.search(r"^state +paused by ann: db migration$", shown_again(address), re.M)
    assert "none: it is paused" in shown_again(address)
    assert [
        r[0] for r in rows(squidmesh(address, "schedules", "list", "--state", "paused").stdout)
    ] == [SCHEDULE]
    as_json = json.loads(squidmesh(address, "schedules", "get", SCHEDULE, "--json").stdout)
    assert (as_json["state"], as_json["paused_by"], as_json["pause_note"]) == (
        "SCHEDULE_STATE_PAUSED",
        "ann",
        "db migration",
    )
    resumed = squidmesh(address, "schedules", "resume", SCHEDULE, "--actor", "ann")
    assert resumed.returncode == 0, resumed.stderr
    assert re.search(r"  active, next tick .* \(in .+\)$", resumed.stdout.strip())

    # Trigger and backfill work on a paused schedule too; paused, no tick of its own can
    # come between the runs counted below.
    assert squidmesh(address, "schedules", "pause", SCHEDULE, "--actor", "ann").returncode == 0

    # Trigger now: the same key gives the same run; --watch follows a run to its end.
    first = squidmesh(address, "schedules", "trigger", SCHEDULE, "--key", "k-1")
    assert first.returncode == 0, first.stderr
    run_id = first.stdout.split()[1]
    assert first.stdout.strip() == (f"run {run_id} started (cli-report v1) by schedule {SCHEDULE}")
    again = squidmesh(address, "schedules", "trigger", SCHEDULE, "--key", "k-1", "--json")
    assert json.loads(again.stdout)["run"]["id"] == run_id
    watched = squidmesh(address, "schedules", "trigger", SCHEDULE, "--watch")
    assert watched.returncode == 0, watched.stderr
    watched_id = watched.stdout.split()[1]
    assert watched_id != run_id
    assert watched.stdout.splitlines()[-1].startswith(f"{watched_id}  cli-report v1  completed")
    run_shown = squidmesh(address, "runs", "get", run_id)
    assert re.search(rf"^schedule +{SCHEDULE} \(manual, tick ", run_shown.stdout, re.M)

    # Preview: a saved schedule's next fire times, and a bare spec across New York's spring
    # gap (2026-03-08: 02:30 does not exist, the tick fires at 03:00 EDT).
    preview = squidmesh(address, "schedules", "preview", SCHEDULE, "--count", "3")
    assert preview.returncode == 0, preview.stderr
    assert len(rows(preview.stdout)) == 3
    gap = squidmesh(
        address,
        "schedules",
        "preview",
        "--cron",
        "30 2 * * *",
        "--tz",
        "America/New_York",
        "--after",
        "2026-03-07T12:00:00Z",
        "--count",
        "2",
    )
    assert gap.returncode == 0, gap.stderr
    assert [r[:2] for r in rows(gap.stdout)] == [
        ["2026-03-08 03:00:00 EDT", "2026-03-08 07:00:00 UTC"],
        ["2026-03-09 02:30:00 EDT", "2026-03-09 06:30:00 UTC"],
    ]

    # Backfill three past days: three runs; again: none, the three ticks left as decided.
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    start, end = today - timedelta(days=4), today - timedelta(days=1)
    window = ("--start", f"{start:%Y-%m-%dT%H:%M:%SZ}", "--end", f"{end:%Y-%m-%dT%H:%M:%SZ}")
    backfilled = squidmesh(address, "schedules", "backfill", SCHEDULE, *window, "--actor", "ann")
    assert backfilled.returncode == 0, backfilled.stderr
    *table, summary = backfilled.stdout.splitlines()
    assert summary == "3 ticks in the range: 3 runs started, 0 left as they were decided before"
    started = rows("\n".join(table))
    assert [t[2:4] for t in started] == [["backfill", "started"]] * 3
    backfill_runs = {t[4] for t in started}
    repeat = squidmesh(address, "schedules", "backfill", SCHEDULE, *window, "--json")
    repeated = json.loads(repeat.stdout)
    assert repeated.get("started", 0) == 0 and len(repeated["ticks"]) == 3
    assert {t["run_id"] for t in repeated["ticks"]} == backfill_runs

    recent = shown_again(address).split("recent ticks\n", 1)[1]
    origins = [r[2] for r in rows(recent)]
    assert sorted(origins) == ["backfill"] * 3 + ["manual"] * 2
    by_schedule = squidmesh(address, "runs", "list", "--schedule", SCHEDULE)
    assert {r[0] for r in rows(by_schedule.stdout)} == backfill_runs | {run_id, watched_id}

    # Refusals: one line each, exit 1.
    missing = squidmesh(address, "schedules", "get", "nope")
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr
    future = squidmesh(
        address, "schedules", "backfill", SCHEDULE, "--start", "2026-01-01", "--end", "2999-01-01"
    )
    assert future.returncode == 1 and "INVALID_ARGUMENT" in future.stderr, future.stderr
    deleted = squidmesh(address, "schedules", "delete", SCHEDULE)
    assert deleted.returncode == 1 and "SCHEDULE_FROM_DEFINITION" in deleted.stderr


def shown_again(address: str) -> str:
    shown = squidmesh(address, "schedules", "get", SCHEDULE)
    assert shown.returncode == 0, shown.stderr
    return shown.stdout
