"""The `squidmesh` CLI against a real server and worker: start --watch, get, list, errors."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.e2e.conftest import Cluster
from tests.support import REPO


def squidmesh(address: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *args, "--server", address],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


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

    shown = squidmesh(server.address, "runs", "get", run_id)
    assert shown.returncode == 0
    assert "charge_card" in shown.stdout and '"amount":2000' in shown.stdout

    listed = squidmesh(server.address, "runs", "list", "--json")
    assert listed.returncode == 0
    assert [r["id"] for r in json.loads(listed.stdout)["runs"]] == [run_id]

    workflows = squidmesh(server.address, "workflows", "list")
    assert workflows.returncode == 0 and "payment" in workflows.stdout

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

    not_json = squidmesh(server.address, "runs", "start", "payment", "--payload", "{oops")
    assert not_json.returncode == 2 and "not JSON" in not_json.stderr
    assert "Traceback" not in not_json.stderr

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
    assert first["id"] == second["id"] != run_id and first["sourceRunId"] == run_id

    terminal = squidmesh(
        server.address, "runs", "cancel", run_id, "--reason", "late", "--idempotency-key", "c-1"
    )
    assert terminal.returncode == 1 and "FAILED_PRECONDITION" in terminal.stderr
