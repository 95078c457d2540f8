"""Gates across a crash: an approval's deadline is a timer row, so a server killed with SIGKILL
before it is due fires it once restarted, once."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from squidmesh.v1 import run_pb2

from tests.e2e.conftest import Cluster
from tests.integration.test_gates import reviewed, step_of


def test_an_approval_deadline_fires_after_a_server_sigkill_and_restart(cluster: Cluster) -> None:
    server = cluster.start_server()
    with cluster.client() as client:
        client.register_workflow(reviewed("timed", deadline_ms=300))
        run = client.start_run("timed", {})
        server.kill()  # well before the deadline: StartRun returned at commit
        killed_at = datetime.now(UTC)
    assert run.status == run_pb2.RUN_STATUS_PAUSED
    time.sleep(0.5)  # the deadline passes while no server runs
    cluster.start_server()
    restarted_at = datetime.now(UTC)
    with cluster.client() as client:
        final = client.wait_for_run(run.id, timeout=60)
        events = list(client.watch_run(run.id, after_sequence=0))
    assert final.status == run_pb2.RUN_STATUS_COMPLETED, final
    review = step_of(final, "review")
    assert review.error.reason == "approval_rejected"
    fired_at = review.end_time.ToDatetime(tzinfo=UTC)
    assert fired_at > killed_at, "the deadline fired before the kill: nothing was tested"
    # On time: as soon as the restarted server's timer loop ran, not a reconcile later.
    assert (fired_at - restarted_at).total_seconds() < 5, (fired_at, restarted_at)
    failed = [
        e.event
        for e in events
        if e.event.type == run_pb2.RUN_EVENT_TYPE_STEP_FAILED and e.event.step == "review"
    ]
    assert len(failed) == 1  # fired once
    assert [s.name for s in final.steps] == ["review", "rejected_log"]
