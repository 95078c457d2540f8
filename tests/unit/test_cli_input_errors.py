"""Bad input to a client command is one line on stderr and exit status 2, before any call.

Commands point at a port nothing listens on: input that got as far as a call would end with
UNAVAILABLE and exit status 1 instead."""

from __future__ import annotations

from pathlib import Path

import pytest

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
