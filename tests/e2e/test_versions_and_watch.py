"""Workflow versioning with in-flight runs, a rolling deploy on a shared queue, and WatchRun
resumption across server processes."""

from __future__ import annotations

import time

from squidmesh.v1 import run_pb2

from tests.e2e.conftest import Cluster
from tests.support import ServerProcess, wait_for
from worker_sdk import Client


def test_runs_keep_their_version(cluster: Cluster) -> None:
    cluster.start_server()
    cluster.start_worker("tests.e2e.flows")
    with cluster.client() as client:
        cluster.wait_registered(client, "e2e_versioned", version=1)
        old = client.start_run("e2e_versioned", {"seconds": 2})
        assert old.workflow_version == 1
        cluster.start_worker("tests.e2e.flows_v2")  # registers the changed definition
        cluster.wait_registered(client, "e2e_versioned", version=2)
        new = client.start_run("e2e_versioned", {})
        assert new.workflow_version == 2
        old_final = client.wait_for_run(old.id, timeout=30)
        new_final = client.wait_for_run(new.id, timeout=30)

    assert old_final.status == run_pb2.RUN_STATUS_COMPLETED
    assert [s.name for s in old_final.steps] == ["v1_step"]
    assert old_final.workflow_version == 1
    assert new_final.status == run_pb2.RUN_STATUS_COMPLETED
    assert [s.name for s in new_final.steps] == ["v2_step"]


DISPATCH_TIMEOUT = 30.0
"""The server's default: an attempt not claimed this long after it was published is
published again."""


def test_a_task_an_older_worker_cannot_run_reaches_a_newer_one_quickly(cluster: Cluster) -> None:
    # The dispatch timeout stays at its default: before workers gave such tasks back, each one
    # the older worker received waited for it.
    cluster.start_server()
    old = cluster.start_worker("tests.e2e.flows")
    cluster.start_worker("tests.e2e.flows_rolling")
    with cluster.client() as client:
        cluster.wait_registered(client, "e2e_slow")
        cluster.wait_registered(client, "e2e_rolling")
        durations = []
        for _ in range(12):  # one at a time: the idle workers take turns at the queue
            began = time.monotonic()
            run = client.start_run("e2e_rolling", {})
            final = client.wait_for_run(run.id, timeout=60)
            durations.append(time.monotonic() - began)
            assert final.status == run_pb2.RUN_STATUS_COMPLETED

    declined = old.output().count("attempt_handler_unknown")
    print(
        f"measured: 12 runs in {sum(durations):.2f}s (slowest {max(durations):.2f}s),"
        f" {declined} deliveries declined by the old worker"
    )
    assert declined >= 1, "the older worker never received one: nothing was tested"
    # A declined task that waited for the dispatch timeout would take 30 s; one given back
    # takes a fraction of a second, a few seconds on a busy machine.
    assert max(durations) < DISPATCH_TIMEOUT / 2, f"{durations}: one waited for the timeout"


def test_watch_resumes_exactly_once_and_streams_from_two_servers(cluster: Cluster) -> None:
    first = cluster.start_server()
    second = ServerProcess(cluster.env, cluster.log_dir)  # same database, another process
    cluster.processes.append(second)
    cluster.start_worker(concurrency=2)
    with cluster.client() as client, Client(second.address) as other:
        cluster.wait_registered(client, "e2e_slow")
        run = client.start_run("e2e_slow", {"seconds": 0.3})

        # Watch on the second server while the first one started the run.
        seen: list[int] = []
        stream = other.watch_run(run.id)
        snapshot = next(stream)
        assert snapshot.WhichOneof("message") == "snapshot"
        cursor = snapshot.snapshot.last_sequence
        for message in stream:
            if message.WhichOneof("message") == "event":
                seen.append(message.event.sequence)
                if len(seen) == 3:
                    break  # disconnect mid-run...
        stream.close()
        # ...and resume from the last sequence number seen, on the first server.
        for message in client.watch_run(run.id, after_sequence=seen[-1]):
            assert message.WhichOneof("message") in ("event", "keep_alive")
            if message.WhichOneof("message") == "event":
                seen.append(message.event.sequence)
        final = client.get_run(run.id)

    assert final.status == run_pb2.RUN_STATUS_COMPLETED
    # Every event exactly once, in order, with no gap after the snapshot.
    assert seen == list(range(cursor + 1, final.last_sequence + 1))
    wait_for(lambda: first.proc.poll() is None, 1, "first server alive")
