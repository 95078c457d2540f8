"""Bad input to a client command is one line on stderr and exit status 2, before any call.

Commands point at a port nothing listens on: input that got as far as a call would end with
UNAVAILABLE and exit status 1 instead."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import get_args

import pytest
from squidmesh.cli.parser import MISSED_TICKS, OVERLAPS, ClientCommand, add_client_commands
from squidmesh.client import MissedTicksName, OverlapName

from server.cli import main
from tests.support import free_port


def squidmesh(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str]]:
    """Runs the CLI in this process: its exit status and its stderr lines."""
    try:
        code = main([*args, "--server", f"127.0.0.1:{free_port()}"])
    except SystemExit as exc:  # argparse
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.err.splitlines()


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        ("[1, 2]", "squidmesh: --payload must be a JSON object, not a list"),
        ('"x"', "squidmesh: --payload must be a JSON object, not a string"),
        ("null", "squidmesh: --payload must be a JSON object, not null"),
        ("{oops", "squidmesh: --payload is not JSON: Expecting property name enclosed in double"),
        ('{"n": NaN}', "squidmesh: --payload.n: nan is not a JSON number"),
        ('{"n": 123456789012345678}', "squidmesh: --payload.n: integer 123456789012345678 does"),
    ],
)
def test_a_payload_that_is_not_a_json_object(
    capsys: pytest.CaptureFixture[str], payload: str, error: str
) -> None:
    code, err = squidmesh(capsys, "runs", "start", "w", "--payload", payload)
    assert code == 2
    assert len(err) == 1 and err[0].startswith(error)


@pytest.mark.parametrize(
    ("content", "error"),
    [
        ("- name: a\n- name: b\n", "must be a JSON object, not a list"),
        ("just text", "must be a JSON object, not a string"),
        ("", "must be a JSON object, not null"),
        ("{name: a", "is not valid YAML or JSON: expected ',' or '}', but got '<stream end>' "),
        ("name: a\nsteps: 5\n", "is not a workflow definition: Failed to parse steps field"),
        ("name: [a]\n", "is not a workflow definition: Failed to parse name field"),
        ("name: a\nsteps:\n  - {name: s, x: !!set {a}}\n", "set is not JSON-serialisable"),
        ("name: a\n\x01", "is not valid YAML or JSON: unacceptable character #x0001"),
    ],
)
def test_a_workflow_file_that_is_not_a_definition(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, content: str, error: str
) -> None:
    path = tmp_path / "w.yaml"
    path.write_text(content)
    code, err = squidmesh(capsys, "workflows", "register", str(path))
    assert code == 2
    assert len(err) == 1 and err[0].startswith(f"squidmesh: {path}") and error in err[0]


def test_a_workflow_file_that_cannot_be_read(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "missing.yaml"
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    cases = {
        missing: f"squidmesh: cannot read {missing}: No such file or directory",
        tmp_path: f"squidmesh: cannot read {tmp_path}: Is a directory",
        binary: f"squidmesh: {binary} is not a UTF-8 text file",
    }
    for path, error in cases.items():
        assert squidmesh(capsys, "workflows", "register", str(path)) == (2, [error])


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--status", "bogus"], "status 'bogus' is not one of: pending, running, waiting,"),
        (["--page-size", "0"], "argument --page-size: must be from 1 to 1000, got 0"),
        (["--page-size", "ten"], "argument --page-size: 'ten' is not a whole number"),
        (["--created-after", "yesterday"], "'yesterday' is not an ISO 8601 time"),
        (["--created-before", "2026-13-01"], "'2026-13-01' is not an ISO 8601 time"),
        (["--output", "yaml"], "argument -o/--output: invalid choice: 'yaml'"),
    ],
)
def test_bad_options_of_runs_list(
    capsys: pytest.CaptureFixture[str], args: list[str], error: str
) -> None:
    code, err = squidmesh(capsys, "runs", "list", *args)
    assert code == 2
    assert err[-1].startswith("squidmesh runs list: error: ") and error in err[-1]


def test_bad_sequence_of_runs_watch(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = squidmesh(capsys, "runs", "watch", "r", "--after", "-1")
    assert code == 2 and "argument --after: must be 0 or more, got -1" in err[-1]


def test_an_unreachable_server_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = squidmesh(capsys, "runs", "get", "r")
    assert code == 1
    assert len(err) == 1 and err[0].startswith("squidmesh: UNAVAILABLE: cannot reach the server")


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["runs", "resume", "r"], "the following arguments are required: --actor"),
        (["runs", "approve", "r", "--actor", "ada", "--payload", "[1]"], "not a list"),
        (["runs", "reject", "r", "--actor", "ada", "--payload", "{x"], "--payload is not JSON"),
        (["runs", "resume", "r", "--actor", "ada", "--payload", "{}"], "unrecognized arguments"),
        (["runs", "history", "r", "--all", "--page-size", "5"], "not allowed with argument"),
        (["runs", "history", "r", "--page-size", "0"], "must be from 1 to 1000, got 0"),
        (["events", "publish", "paid"], "the following arguments are required: --key"),
        (["events", "publish", "paid", "--key", "k", "--payload", "3"], "not a number"),
        (["workers", "list", "--gone-within", "soon"], "'soon' is not a duration"),
        (["workers", "list", "--gone-within", "1h30"], "'1h30' is not a duration"),
        (["workers", "list", "--gone-within", "-5"], "must be 0 or more, got '-5'"),
    ],
)
def test_bad_input_to_the_new_commands(
    capsys: pytest.CaptureFixture[str], args: list[str], error: str
) -> None:
    code, err = squidmesh(capsys, *args)
    assert code == 2
    assert error in err[-1]


def _parsed(*args: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_client_commands(parser.add_subparsers())
    return parser.parse_args(args)


def test_the_new_commands_read_their_options() -> None:
    approve = _parsed(
        "runs", "approve", "r-1", "--actor", "ada", "--step", "s", "--key", "k", "--json"
    )
    assert (approve.run_id, approve.actor, approve.step, approve.idempotency_key) == (
        "r-1",
        "ada",
        "s",
        "k",
    )
    assert approve.payload is None and approve.output == "json"
    assert approve.handler == ClientCommand("squidmesh.cli.decisions", "approve")
    resume = _parsed("runs", "resume", "r-1", "--actor", "ada", "--idempotency-key", "k2")
    assert resume.idempotency_key == "k2" and resume.comment == ""
    published = _parsed("events", "publish", "paid", "--key", "order:7", "--id", "e-1")
    assert (published.name, published.correlation_key, published.event_id) == (
        "paid",
        "order:7",
        "e-1",
    )
    assert published.handler == ClientCommand("squidmesh.cli.events", "publish")
    history = _parsed("runs", "history", "r-1", "--all")
    assert history.all and history.page_size == 100
    assert _parsed("runs", "explain", "r-1").handler.function == "explain"
    assert _parsed("runs", "list", "--parent", "p-1").parent == "p-1"
    for given, seconds in (("90s", 90), ("15m", 900), ("1h30m", 5400), ("2d", 172800)):
        assert _parsed("workers", "list", "--gone-within", given).gone_within == seconds
    assert _parsed("workers", "list", "--gone-within", "0.5").gone_within == 0.5
    assert _parsed("workers", "list", "--gone-within", "500ms").gone_within == 0.5
    assert _parsed("workers", "list").gone_within is None  # the server's default (1 h)


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["schedules", "list", "--state", "late"], "state 'late' is not one of: active, paused,"),
        (["schedules", "preview"], "squidmesh: preview takes a schedule id or --cron EXPR, one"),
        (["schedules", "preview", "s", "--cron", "@daily"], "a schedule id or --cron EXPR, one"),
        (["schedules", "preview", "s", "--tz", "UTC"], "--tz and --jitter go with --cron"),
        (["schedules", "preview", "--cron", " "], "squidmesh: empty cron expression"),
        (["schedules", "preview", "--cron", "@daily", "--count", "0"], "must be from 1 to 100"),
        (["schedules", "preview", "--cron", "@daily", "--jitter", "soon"], "is not a duration"),
        (["schedules", "backfill", "s", "--start", "2026-01-01"], "required: --end"),
        (
            ["schedules", "backfill", "s", "--start", "2026-01-02", "--end", "2026-01-01"],
            "squidmesh: end_time is before start_time",
        ),
        (["schedules", "backfill", "s", "--start", "x", "--end", "y"], "is not an ISO 8601 time"),
        (["schedules", "create", "s", "--cron", "@daily"], "required: --workflow"),
        (
            ["schedules", "create", "s", "--workflow", "w", "--cron", "@daily", "--overlap", "q"],
            "argument --overlap: invalid choice: 'q'",
        ),
        (
            ["schedules", "create", "s", "--workflow", "w", "--cron", "@daily", "--payload", "[]"],
            "squidmesh: --payload must be a JSON object, not a list",
        ),
        (
            [
                "schedules",
                "create",
                "s",
                "--workflow",
                "w",
                "--cron",
                "@daily",
                "--max-catchup-runs",
                "3",
            ],
            "squidmesh: --max-catchup-runs goes with --missed-ticks run_all",
        ),
        (["schedules", "pause"], "the following arguments are required: schedule_id"),
    ],
)
def test_bad_input_to_schedule_commands(
    capsys: pytest.CaptureFixture[str], args: list[str], error: str
) -> None:
    code, err = squidmesh(capsys, *args)
    assert code == 2
    assert error in err[-1]
    if error.startswith("squidmesh: "):  # found by the command, not argparse: one line
        assert len(err) == 1


def test_schedule_commands_read_their_options() -> None:
    paused = _parsed("schedules", "pause", "report/nightly", "--note", "maintenance")
    assert (paused.schedule_id, paused.note) == ("report/nightly", "maintenance")
    assert paused.actor  # $USER, or "cli"
    assert paused.handler == ClientCommand("squidmesh.cli.schedules", "pause")
    listed = _parsed("schedules", "list", "--state", "paused", "--state", "stopped")
    assert listed.state == [2, 3] and listed.page_size == 50
    triggered = _parsed("schedules", "trigger", "s", "--key", "k-1", "--watch", "--actor", "ada")
    assert (triggered.idempotency_key, triggered.watch, triggered.actor) == ("k-1", True, "ada")
    backfill = _parsed(
        "schedules", "backfill", "s", "--start", "2026-01-01T00:00:00Z", "--end", "2026-01-02"
    )
    assert backfill.start.tzinfo is not None and backfill.end.tzinfo is None  # local time
    preview = _parsed("schedules", "preview", "--cron", "0 3 * * *", "--tz", "Europe/Paris")
    assert (preview.schedule_id, preview.cron, preview.tz, preview.count) == (
        "",
        "0 3 * * *",
        "Europe/Paris",
        5,
    )
    created = _parsed(
        "schedules",
        "create",
        "s",
        "--workflow",
        "w",
        "--cron",
        "@daily",
        "--jitter",
        "5m",
        "--catchup-window",
        "2h",
        "--missed-ticks",
        "run_all",
        "--max-catchup-runs",
        "4",
        "--paused",
    )
    assert (created.jitter, created.catchup_window, created.max_catchup_runs) == (300, 7200, 4)
    assert created.missed_ticks == "run_all" and created.overlap is None and created.paused
    assert _parsed("runs", "list", "--schedule", "report/nightly").schedule == "report/nightly"


def test_the_parser_names_the_policies_of_the_client() -> None:
    assert get_args(MissedTicksName) == MISSED_TICKS
    assert get_args(OverlapName) == OVERLAPS
