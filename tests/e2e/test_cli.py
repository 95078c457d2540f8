"""The `squidmesh` CLI as a user runs it: a separate process against a real server and worker.
Start --watch, watch, get, list, JSON, errors, pipes, --version, completion, a busy port."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

from squidmesh.v1 import run_pb2

from tests.e2e.conftest import Cluster
from tests.e2e.flows_rolling import rolling
from tests.support import REPO, free_port, wait_for

SQUIDMESH = [sys.executable, "-m", "server.cli"]
EVENT = re.compile(r"^\[ *(\d+)\] ")


def squidmesh(address: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SQUIDMESH, *args, "--server", address],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def sequences(stdout: str) -> list[int]:
    return [int(m.group(1)) for line in stdout.splitlines() if (m := EVENT.match(line))]


def test_cli_runs_and_reports_errors(cluster: Cluster) -> None:
    server = cluster.start_server()
    cluster.start_worker("examples.payment")
    with cluster.client() as client:
        cluster.wait_registered(client, "payment")

    started = squidmesh(
        server.address,
        "runs",
        "start",
        "payment",
        "--payload",
        '{"amount": 2000, "customer": "ada"}',
        "--watch",
    )
    assert started.returncode == 0, started.stderr
    lines = started.stdout.splitlines()
    run_id = lines[0].split()[1]
    assert "step_completed" in started.stdout and "fraud_check" in started.stdout
    assert lines[-1].startswith(run_id) and "completed" in lines[-1]
    with cluster.client() as client:
        last_sequence = client.get_run(run_id).last_sequence
    assert sequences(started.stdout) == list(range(1, last_sequence + 1))

    # Watching the finished run prints its whole history once, then its summary once.
    watched = squidmesh(server.address, "runs", "watch", run_id)
    assert watched.returncode == 0, watched.stderr
    assert sequences(watched.stdout) == list(range(1, last_sequence + 1))
    summaries = [line for line in watched.stdout.splitlines() if line.startswith(run_id)]
    assert summaries == [f"{run_id}  payment v1  {lines[-1].split('  ', 2)[2]}"]
    assert "completed in " in summaries[0]
    resumed = squidmesh(server.address, "runs", "watch", run_id, "--after", "5")
    assert sequences(resumed.stdout) == list(range(6, last_sequence + 1))

    shown = squidmesh(server.address, "runs", "get", run_id)
    assert shown.returncode == 0
    assert re.search(r"^status +completed$", shown.stdout, re.M)
    assert re.search(r"^STEP +# +STATUS +WORKER +STARTED +TOOK +DETAIL$", shown.stdout, re.M)
    assert re.search(r"^charge_card +1 +succeeded ", shown.stdout, re.M)
    assert '"amount":2000' in shown.stdout

    workflows = squidmesh(server.address, "workflows", "list")
    assert workflows.returncode == 0
    header, row = workflows.stdout.splitlines()
    assert header.split()[:4] == ["WORKFLOW", "VERSION", "STEPS", "TRIGGERS"]
    assert row.split()[:4] == ["payment", "1", "4", "manual"]

    bad = squidmesh(server.address, "runs", "start", "payment", "--payload", '{"amont": 1}')
    assert bad.returncode == 1
    assert "INVALID_ARGUMENT" in bad.stderr
    assert "payload.amount: is required" in bad.stderr
    assert "payload.amont" in bad.stderr

    missing = squidmesh(server.address, "runs", "get", "00000000-0000-0000-0000-000000000000")
    assert (
        missing.returncode == 1
        and "NOT_FOUND" in missing.stderr
        and "RUN_NOT_FOUND" in missing.stderr
    )

    for payload, error in (("{oops", "is not JSON"), ("[1, 2]", "not a list")):
        refused = squidmesh(server.address, "runs", "start", "payment", "--payload", payload)
        assert refused.returncode == 2 and refused.stdout == ""
        assert refused.stderr.count("\n") == 1 and error in refused.stderr

    # charge_card is irreversible: replay needs the flag; the same key gives the same replay.
    refused = squidmesh(server.address, "runs", "replay", run_id)
    assert refused.returncode == 1 and "IRREVERSIBLE_STEPS_COMPLETED" in refused.stderr
    replays = [
        squidmesh(
            server.address,
            "runs",
            "replay",
            run_id,
            "--allow-irreversible",
            "--idempotency-key",
            "again-1",
            "--json",
        )
        for _ in range(2)
    ]
    assert all(r.returncode == 0 for r in replays), replays[0].stderr
    first, second = (json.loads(r.stdout) for r in replays)
    assert first["id"] == second["id"] != run_id and first["source_run_id"] == run_id

    terminal = squidmesh(
        server.address, "runs", "cancel", run_id, "--reason", "late", "--idempotency-key", "c-1"
    )
    assert terminal.returncode == 1 and "FAILED_PRECONDITION" in terminal.stderr


def test_cli_output_for_pipes_and_programs(cluster: Cluster) -> None:
    server = cluster.start_server()
    cluster.start_worker("examples.payment")
    with cluster.client() as client:
        cluster.wait_registered(client, "payment")
        runs = [client.start_run("payment", {"amount": n}).id for n in (1, 2, 3)]
        for run_id in runs:
            client.wait_for_run(run_id, timeout=60)

    # Piped (not a terminal): a plain table with a header, newest first, no colour codes.
    listed = squidmesh(server.address, "runs", "list", "--status", "completed")
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["RUN", "WORKFLOW", "TRIGGER", "STATUS", "CREATED", "TOOK", "DETAIL"]
    assert [row.split()[0] for row in rows] == runs[::-1]
    assert all(row.split()[4] == "completed" for row in rows)
    assert "\x1b" not in listed.stdout

    # Pages: the hint for the next one goes to stderr, out of the way of a pipe.
    paged = squidmesh(server.address, "runs", "list", "--page-size", "2")
    assert len(paged.stdout.splitlines()) == 3 and "--page-token " in paged.stderr
    none = squidmesh(server.address, "runs", "list", "--created-after", "2999-01-01T00:00:00Z")
    assert [line.split() for line in none.stdout.splitlines()] == [header.split()]

    # JSON: the proto's field names (snake_case), as grpcurl prints them.
    as_json = json.loads(squidmesh(server.address, "runs", "list", "--output", "json").stdout)
    newest = as_json["runs"][0]
    assert newest["id"] == runs[-1] and newest["workflow_version"] == 1
    assert "create_time" in newest and "createTime" not in newest
    got = json.loads(squidmesh(server.address, "runs", "get", runs[0], "-o", "json").stdout)
    assert got["steps"][0]["attempts"][0]["worker_id"]

    # A stream as JSON: one object per line, every event once, nothing else.
    streamed = squidmesh(server.address, "runs", "watch", runs[0], "--output", "json")
    assert streamed.returncode == 0
    messages = [json.loads(line) for line in streamed.stdout.splitlines()]
    assert [int(m["event"]["sequence"]) for m in messages] == list(range(1, len(messages) + 1))
    assert messages[-1]["event"]["run_status"] == "RUN_STATUS_COMPLETED"
    started = squidmesh(
        server.address,
        "runs",
        "start",
        "payment",
        "--payload",
        '{"amount": 4}',
        "--watch",
        "--json",
    )
    assert started.returncode == 0, started.stderr
    run, *watched = (json.loads(line) for line in started.stdout.splitlines())
    assert run["workflow"] == "payment" and run["payload"]["amount"] == 4
    assert [int(m["event"]["sequence"]) for m in watched] == list(range(1, len(watched) + 1))

    # The reader goes away: `| head -1`, and a pipe closed before anything was written.
    watch = [*SQUIDMESH, "runs", "watch", runs[0], "--server", server.address]
    head = subprocess.run(
        ["sh", "-c", '"$@" | head -1', "sh", *watch],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert head.stdout.startswith("[  1] ") and head.stdout.count("\n") == 1
    assert head.stderr == ""
    read_end, write_end = os.pipe()
    os.close(read_end)
    closed = subprocess.run(
        [*SQUIDMESH, "runs", "list", "--server", server.address],
        cwd=REPO,
        stdout=write_end,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
        check=False,
    )
    os.close(write_end)
    assert closed.stderr == ""
    assert closed.returncode == 128 + 13  # as if SIGPIPE had ended it, like other Unix tools


def test_version_and_shell_completion() -> None:
    shown = subprocess.run(
        [*SQUIDMESH, "--version"], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert shown.stdout == f"squidmesh {version('squidmesh')}\n"

    script = subprocess.run(
        [*SQUIDMESH, "completion", "bash"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    # bash completes `squidmesh runs l` and `squidmesh runs list --st` with the script.
    completed = subprocess.run(
        [
            "bash",
            "-c",
            'eval "$1"; complete_words() { COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); '
            '_shtab_squidmesh; echo "${COMPREPLY[*]}"; }; '
            "complete_words squidmesh runs l; complete_words squidmesh runs list --st; "
            "complete_words squidmesh runs ap; complete_words squidmesh workers l; "
            "complete_words squidmesh events publish x --k",
            "bash",
            script,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert completed.stdout.splitlines() == ["list", "--status", "approve", "list", "--key"]


def test_serve_on_a_busy_port_is_one_line_at_once(tmp_path: Path) -> None:
    with socket.socket() as taken:
        port = free_port()
        taken.bind(("127.0.0.1", port))
        taken.listen()
        data_dir = tmp_path / "data"
        env = {k: v for k, v in os.environ.items() if not k.startswith("SQUIDMESH_")}
        served = subprocess.run(
            [*SQUIDMESH, "serve", "--address", f"127.0.0.1:{port}", "--data-dir", str(data_dir)],
            cwd=REPO,
            env={**env, "PYTHONPATH": str(REPO)},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert served.returncode == 1
    assert served.stderr == (
        f"squidmesh: cannot listen on 127.0.0.1:{port}: it is in use "
        "(is another server running? see --address)\n"
    )
    assert not data_dir.exists()  # refused before the embedded Postgres and Redis started


def test_runs_get_says_why_a_run_waits_for_a_worker_with_its_handler(cluster: Cluster) -> None:
    """A task whose handler the only worker on its queue lacks: the worker gives it back, and
    `runs get` shows the decline, naming the worker (the run is not silently pending)."""
    server = cluster.start_server()
    old = cluster.start_worker("tests.e2e.flows")
    with cluster.client() as client:
        cluster.wait_registered(client, "e2e_slow")
        client.register_workflow(rolling)
        run = client.start_run("e2e_rolling", {})

        def declined() -> bool:
            events = client.watch_run(run.id, after_sequence=0)
            for message in events:
                if message.event.type == run_pb2.RUN_EVENT_TYPE_ATTEMPT_DECLINED:
                    events.close()
                    return True
                if message.event.sequence >= client.get_run(run.id).last_sequence:
                    events.close()
                    return False
            return False

        wait_for(declined, 30, "a decline recorded on the run", every=0.2)

    shown = squidmesh(server.address, "runs", "get", run.id)
    assert shown.returncode == 0, shown.stderr
    assert "recent events" in shown.stdout
    assert re.search(
        r"attempt_declined +new_step#1 +declined by worker \S+, which lacks handler "
        r"e2e_rolling\.new_step on queue e2e_slow",
        shown.stdout,
    ), shown.stdout
    assert old.proc.poll() is None
