"""`runs explain` and `workers list` as a user runs them against a real server and worker: a run
no worker serves says so, then runs once a worker starts; the worker is listed live with its
slots, then gone once killed."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

from tests.e2e.conftest import Cluster
from tests.e2e.flows_diagnosis import held
from tests.e2e.test_cli import squidmesh
from tests.support import wait_for

WAIT_S = 60.0
"""Generous: the machine may be slow to start a worker process."""


def test_explain_and_workers_list(cluster: Cluster, tmp_path: Path) -> None:
    server = cluster.start_server()
    release = tmp_path / "release"
    with cluster.client() as client:
        client.register_workflow(held)
        run = client.start_run("e2e_held", {"release": str(release)})

    explained = squidmesh(server.address, "runs", "explain", run.id)
    assert explained.returncode == 0, explained.stderr
    lines = explained.stdout.splitlines()
    assert lines[0] == f"run          {run.id}"
    assert re.match(r"status +(pending|running)", lines[1]), lines
    assert lines[2].startswith("summary      ") and len(lines[2]) > len("summary      ")
    assert re.search(r"^  NO_WORKER_FOR_HANDLER  step hold  since .* ago ", explained.stdout, re.M)
    assert re.search(
        r"^    evidence: .*handler=e2e_held\.hold.*queue=e2e_held", explained.stdout, re.M
    )
    assert "next actions" in explained.stdout
    assert re.search(r"^  cancel +allowed$", explained.stdout, re.M), explained.stdout
    as_json = json.loads(squidmesh(server.address, "runs", "explain", run.id, "--json").stdout)
    assert as_json["blockers"][0]["code"] == "BLOCKER_CODE_NO_WORKER_FOR_HANDLER"

    none = squidmesh(server.address, "workers", "list", "--queue", "e2e_held")
    assert none.returncode == 0 and len(none.stdout.splitlines()) == 1  # the header only

    worker = cluster.start_worker("tests.e2e.flows_diagnosis", concurrency=1)

    def running() -> bool:
        shown = squidmesh(server.address, "runs", "explain", run.id, "--json").stdout
        return [b["code"] for b in json.loads(shown).get("blockers", [])] == [
            "BLOCKER_CODE_ATTEMPT_RUNNING"
        ]

    wait_for(running, WAIT_S, "the run to run on the worker", every=0.2)
    listed = squidmesh(server.address, "workers", "list", "--queue", "e2e_held")
    header, row = listed.stdout.splitlines()
    assert header.split()[:5] == ["WORKER", "HOST", "QUEUES", "HANDLERS", "SLOTS"]
    assert row.split()[1:5] == [socket.gethostname(), "e2e_held", "e2e_held.hold", "1/1"]
    assert row.endswith(" live"), row
    workers = json.loads(squidmesh(server.address, "workers", "list", "-o", "json").stdout)
    assert workers["workers"][0]["labels"]["pid"] == str(worker.proc.pid)

    release.touch()
    with cluster.client() as client:
        client.wait_for_run(run.id, timeout=WAIT_S)
    done = squidmesh(server.address, "runs", "explain", run.id)
    assert re.search(r"^  RUN_COMPLETED", done.stdout, re.M), done.stdout

    worker.proc.kill()
    worker.proc.wait()

    def gone() -> bool:
        shown = squidmesh(server.address, "workers", "list", "--gone-within", "10m").stdout
        rows = shown.splitlines()[1:]
        return len(rows) == 1 and re.search(r" gone( .* ago)?$", rows[0]) is not None

    wait_for(gone, WAIT_S, "the killed worker listed as gone", every=0.5)
