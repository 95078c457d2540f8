"""The payment example and conditional transitions, with server and workers as processes."""

from __future__ import annotations

from google.protobuf import json_format
from squidmesh.v1 import run_pb2

from tests.e2e.conftest import Cluster


def _attempt_counts(run: run_pb2.Run) -> dict[str, int]:
    return {s.name: len(s.attempts) for s in run.steps}


def test_payment_example_runs_to_completion(cluster: Cluster) -> None:
    server = cluster.start_server()
    cluster.start_worker("examples.payment")
    with cluster.client() as client:
        cluster.wait_registered(client, "payment")
        small = client.start_run("payment", {"amount": 42, "customer": "ada"})
        large = client.start_run("payment", {"amount": 5000})
        small_final = client.wait_for_run(small.id, timeout=30)
        large_final = client.wait_for_run(large.id, timeout=30)
        small_history = list(client.watch_run(small.id, after_sequence=0))

    assert server.proc.poll() is None
    assert small_final.status == run_pb2.RUN_STATUS_COMPLETED, small_final
    assert _attempt_counts(small_final) == {"validate": 1, "charge_card": 1, "send_receipt": 1}
    for step in small_final.steps:
        assert step.status == run_pb2.STEP_STATUS_COMPLETED
        assert [a.status for a in step.attempts] == [run_pb2.ATTEMPT_STATUS_SUCCEEDED]
    # The first step came through the queue; each next one was handed to the same worker in
    # the answer to the previous result.
    started = [
        (m.event.step, json_format.MessageToDict(m.event.data))
        for m in small_history
        if m.event.type == run_pb2.RUN_EVENT_TYPE_ATTEMPT_STARTED
    ]
    assert [(step, data.get("handoff", False)) for step, data in started] == [
        ("validate", False),
        ("charge_card", True),
        ("send_receipt", True),
    ]
    assert len({data["worker_id"] for _, data in started}) == 1
    context = json_format.MessageToDict(small_final.context)
    assert context["validation"] == {"amount": 42, "currency": "EUR", "risk": "low"}
    assert context["charge"]["status"] == "captured"
    assert context["receipt"] == {"sent_to": "ada", "text": "Paid 42 EUR"}

    # The conditional branch: large amounts go through the fraud check.
    assert large_final.status == run_pb2.RUN_STATUS_COMPLETED, large_final
    assert _attempt_counts(large_final) == {
        "validate": 1,
        "fraud_check": 1,
        "charge_card": 1,
        "send_receipt": 1,
    }
    assert set(json_format.MessageToDict(large_final.context)) >= {
        "validation",
        "fraud",
        "charge",
        "receipt",
        "amount",
        "currency",
        "customer",
    }


def test_conditional_transitions_and_no_match(cluster: Cluster) -> None:
    cluster.start_server()
    cluster.start_worker()
    with cluster.client() as client:
        cluster.wait_registered(client, "e2e_branching")
        high = client.start_run("e2e_branching", {"score": 90})
        low = client.start_run("e2e_branching", {"score": 3})
        none = client.start_run("e2e_branching", {"score": 30})
        high_run = client.wait_for_run(high.id, timeout=30)
        low_run = client.wait_for_run(low.id, timeout=30)
        none_run = client.wait_for_run(none.id, timeout=30)

    assert [s.name for s in high_run.steps] == ["score", "high"]
    assert high_run.status == run_pb2.RUN_STATUS_COMPLETED
    assert [s.name for s in low_run.steps] == ["score", "low"]
    assert low_run.status == run_pb2.RUN_STATUS_COMPLETED
    assert none_run.status == run_pb2.RUN_STATUS_FAILED
    assert none_run.error.reason == "no_matching_transition"
    assert "score" in none_run.error.message
    assert [s.name for s in none_run.steps] == ["score"]


def test_dependencies_run_independent_steps_in_parallel(cluster: Cluster) -> None:
    cluster.start_server()
    cluster.start_worker(concurrency=1)
    cluster.start_worker(concurrency=1)
    with cluster.client() as client:
        cluster.wait_registered(client, "e2e_diamond")
        run = client.start_run("e2e_diamond", {"seconds": 1.0})
        final = client.wait_for_run(run.id, timeout=30)

    assert final.status == run_pb2.RUN_STATUS_COMPLETED, final
    steps = {s.name: s for s in final.steps}
    assert set(steps) == {"fan_out", "left", "right", "join"}
    context = json_format.MessageToDict(final.context)
    left, right = context["b"], context["c"]
    # Each worker runs one attempt at a time, so the two 1 s branches overlapping (each began
    # before the other ended, on the server's clock) means they ran concurrently on the two
    # workers, however long a busy machine made them.
    assert left["pid"] != right["pid"]
    (b,), (c,) = steps["left"].attempts, steps["right"].attempts
    assert b.start_time.ToDatetime() < c.end_time.ToDatetime(), (b, c)
    assert c.start_time.ToDatetime() < b.end_time.ToDatetime(), (b, c)
    assert context["d"] == [1, left["pid"], right["pid"]]  # the join saw both outputs
    join_start = steps["join"].attempts[0].start_time.ToDatetime()
    for branch in ("left", "right"):
        assert steps[branch].end_time.ToDatetime() <= join_start
