"""Child runs with a real server and a real worker process: a handler starts a child run
keyed by its order, its first attempt is lost right after and the retry gets the same child;
the parent's wait_child step completes with the child's result, or, when the child fails,
fails and the parent's error route runs."""

from __future__ import annotations

import grpc
from google.protobuf import json_format
from squidmesh.v1 import run_pb2, run_service_pb2
from squidmesh.v1.run_service_pb2_grpc import RunServiceStub

from tests.e2e.conftest import Cluster

WORKER = "tests.e2e.child_flows"
RUN_TIMEOUT_S = 60


def _steps(run: run_pb2.Run) -> dict[str, run_pb2.StepRun]:
    return {s.name: s for s in run.steps}


def test_a_handler_starts_a_child_once_and_the_parent_waits_for_its_end(
    cluster: Cluster,
) -> None:
    server = cluster.start_server()
    cluster.start_worker(WORKER)
    with cluster.client() as client, grpc.insecure_channel(server.address) as channel:
        cluster.wait_registered(client, "e2e_parent")
        cluster.wait_registered(client, "e2e_child")
        good = client.start_run("e2e_parent", {"order": "o-1", "n": 21})
        bad = client.start_run("e2e_parent", {"order": "o-2", "n": 1, "fail": True})
        good_final = client.wait_for_run(good.id, timeout=RUN_TIMEOUT_S)
        bad_final = client.wait_for_run(bad.id, timeout=RUN_TIMEOUT_S)
        runs = RunServiceStub(channel)
        children = {
            parent.id: list(
                runs.ListRuns(run_service_pb2.ListRunsRequest(parent_run_id=parent.id)).runs
            )
            for parent in (good, bad)
        }

    assert good_final.status == run_pb2.RUN_STATUS_COMPLETED, good_final
    steps = _steps(good_final)
    # Two attempts of the spawning step, one child: the retry got the child the first made.
    assert len(steps["spawn"].attempts) == 2
    assert len(children[good.id]) == 1
    child = children[good.id][0]
    assert (child.parent_run_id, child.parent_step, child.idempotency_key) == (
        good.id,
        "spawn",
        "o-1",
    )
    assert child.status == run_pb2.RUN_STATUS_COMPLETED
    context = json_format.MessageToDict(good_final.context)
    assert context["spawned"] == {"child_run_id": child.id}
    assert context["child"]["run_id"] == child.id
    assert context["child"]["status"] == "completed"
    assert context["child"]["context"]["computed"] == {"double": 42}
    assert context["result"] == 42
    assert [(c.run_id, c.key, c.status) for c in good_final.children] == [
        (child.id, "o-1", run_pb2.RUN_STATUS_COMPLETED)
    ]

    # The failing child fails the wait; the error route recovers the parent.
    assert bad_final.status == run_pb2.RUN_STATUS_COMPLETED, bad_final
    bad_steps = _steps(bad_final)
    assert bad_steps["await_child"].status == run_pb2.STEP_STATUS_FAILED
    assert bad_steps["await_child"].error.reason == "child_run_failed"
    assert "finish" not in bad_steps
    assert bad_steps["recover"].status == run_pb2.STEP_STATUS_COMPLETED
    assert [c.status for c in children[bad.id]] == [run_pb2.RUN_STATUS_FAILED]
