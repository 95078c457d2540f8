"""ListWorkers and ExplainRun follow real worker processes: a run no worker serves says so,
then runs once a worker with its handler starts; a second run waits for the busy worker's
only slot; an idle worker keeps heartbeating and stays live; a killed one is gone."""

from __future__ import annotations

import socket
from datetime import timedelta
from pathlib import Path

import grpc
from squidmesh.v1 import diagnosis_pb2, run_pb2, run_service_pb2
from squidmesh.v1 import worker_service_pb2 as wpb
from squidmesh.v1.run_service_pb2_grpc import RunServiceStub
from squidmesh.v1.worker_service_pb2_grpc import WorkerServiceStub

from tests.e2e.conftest import Cluster
from tests.e2e.flows_diagnosis import held
from tests.support import wait_for
from worker_sdk import struct_to_dict

WAIT_S = 60.0
"""Generous: the machine may be slow to start a worker process."""


def test_explain_and_workers_follow_real_worker_processes(cluster: Cluster, tmp_path: Path) -> None:
    server = cluster.start_server()
    release = tmp_path / "release"
    with grpc.insecure_channel(server.address) as channel, cluster.client() as client:
        runs, workers = RunServiceStub(channel), WorkerServiceStub(channel)

        def codes(run_id: str) -> list[str]:
            answer = runs.ExplainRun(run_service_pb2.ExplainRunRequest(run_id=run_id))
            return [diagnosis_pb2.BlockerCode.Name(b.code) for b in answer.blockers]

        def listed(gone_within_s: int = 3600) -> list[wpb.WorkerInfo]:
            request = wpb.ListWorkersRequest(queue="e2e_held")
            request.gone_within.FromSeconds(gone_within_s)
            return list(workers.ListWorkers(request).workers)

        client.register_workflow(held)
        first = client.start_run("e2e_held", {"release": str(release)})
        answer = runs.ExplainRun(run_service_pb2.ExplainRunRequest(run_id=first.id))
        assert codes(first.id) == ["BLOCKER_CODE_NO_WORKER_FOR_HANDLER"]
        facts = struct_to_dict(answer.blockers[0].evidence)
        assert (facts["handler"], facts["queue"]) == ("e2e_held.hold", "e2e_held")
        assert listed() == []

        # A worker with the handler starts: it takes the run, and shows the slot it uses.
        worker = cluster.start_worker("tests.e2e.flows_diagnosis", concurrency=1)
        wait_for(
            lambda: codes(first.id) == ["BLOCKER_CODE_ATTEMPT_RUNNING"], WAIT_S, "the run to run"
        )
        (info,) = listed()
        assert info.live and info.host == socket.gethostname()
        assert (list(info.queues), list(info.handlers)) == (["e2e_held"], ["e2e_held.hold"])
        assert (info.slots_used, info.slots_total) == (1, 1)
        assert info.labels["pid"] == str(worker.proc.pid)

        # Its only slot is taken: a second run waits for it.
        second = client.start_run("e2e_held", {"release": str(release)})
        assert codes(second.id) == ["BLOCKER_CODE_WORKERS_BUSY"]

        release.touch()
        for run in (first, second):
            assert client.wait_for_run(run.id, timeout=WAIT_S).status == (
                run_pb2.RUN_STATUS_COMPLETED
            )
            assert codes(run.id) == ["BLOCKER_CODE_RUN_COMPLETED"]

        # Idle, it heartbeats all the same (every second by default): heard from again
        # more than two intervals after it last ran anything, still live.
        (idle,) = listed()
        assert idle.slots_used == 0
        since = idle.last_heartbeat_time.ToDatetime() + timedelta(seconds=2)
        wait_for(
            lambda: (w := listed()[0]).live and w.last_heartbeat_time.ToDatetime() > since,
            WAIT_S,
            "an idle heartbeat",
        )

        # Killed: its stream breaks and it is gone (listed only when gone ones are asked for).
        worker.kill()
        wait_for(lambda: not listed()[0].live, WAIT_S, "the killed worker to be gone")
        (gone,) = listed()
        assert gone.HasField("disconnect_time")
        assert listed(gone_within_s=0) == []
