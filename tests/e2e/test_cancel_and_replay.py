"""CancelRun in every state and ReplayRun, with real server and worker processes.

Cancel: a pending, waiting or retrying run is cancelled at once and its timers are dropped (the
tests wait past their due time); a running attempt is told to stop through the worker's attempt
stream (async handler cancelled, sync handler polling `ctx.cancelled`) well before any
heartbeat could have told it, and a handler that ignores the cancel is ended by its lease. No
attempt starts after a cancel, and the cancel is recorded once with its actor and reason.
Replay: a fresh run linked to its source, on the source's workflow version, trigger and
payload; refused after an irreversible step unless allowed."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2, status_pb2
from squidmesh.v1 import run_pb2

from tests.e2e import cancel_flows
from tests.e2e.conftest import Cluster
from tests.e2e.marks import read_marks
from tests.support import WorkerProcess, wait_for
from worker_sdk import Client, Field, Workflow, struct_to_dict

ACTOR = "e2e-ops"
REASON = "not needed any more"
TERMINAL = (
    run_pb2.RUN_STATUS_COMPLETED,
    run_pb2.RUN_STATUS_FAILED,
    run_pb2.RUN_STATUS_CANCELLED,
)
LIVE_ATTEMPT = (run_pb2.ATTEMPT_STATUS_SCHEDULED, run_pb2.ATTEMPT_STATUS_RUNNING)
NOT_AFTER_CANCEL = (
    run_pb2.RUN_EVENT_TYPE_ATTEMPT_SCHEDULED,
    run_pb2.RUN_EVENT_TYPE_ATTEMPT_STARTED,
    run_pb2.RUN_EVENT_TYPE_STEP_COMPLETED,
    run_pb2.RUN_EVENT_TYPE_TRANSITION,
    run_pb2.RUN_EVENT_TYPE_RUN_COMPLETED,
    run_pb2.RUN_EVENT_TYPE_RUN_FAILED,
    run_pb2.RUN_EVENT_TYPE_LOG,
)
HEARTBEAT_INTERVAL_MS = "20000"
PUSH_LATENCY = int(HEARTBEAT_INTERVAL_MS) / 1000 / 2
"""CancelRun to `cancelled` for handlers that honour the cancel, in seconds, at most. These
tests run the server with a heartbeat interval of HEARTBEAT_INTERVAL_MS (and the steps with
60 s leases, heartbeated every 20 s): a cancel that waited for a heartbeat would take about
20 s, the cancel pushed on the attempt stream takes about 0.1 s (0.2 s on a busy machine).
Half the heartbeat interval tells the two apart however slow the machine is."""


# --- helpers ------------------------------------------------------------------------------------


def _marks(directory: Path, step: str, run_id: str) -> list[str]:
    """What the handler of `step` recorded in this run: the first word of each line."""
    return [line.split()[0] for line in read_marks(directory, step, run_id)]


def _events(client: Client, run_id: str) -> list[run_pb2.RunEvent]:
    return [
        m.event
        for m in client.watch_run(run_id, after_sequence=0, timeout=10)
        if m.WhichOneof("message") == "event"
    ]


def _seconds(ts: timestamp_pb2.Timestamp) -> float:
    return ts.ToNanoseconds() / 1e9


def _wait_status(
    client: Client, run_id: str, status: run_pb2.RunStatus.ValueType, timeout: float = 30
) -> run_pb2.Run:
    name = run_pb2.RunStatus.Name(status)

    def reached() -> run_pb2.Run | None:
        run = client.get_run(run_id)
        if run.status == status:
            return run
        assert run.status not in TERMINAL, f"run ended before {name}: {run}"
        return None

    return wait_for(reached, timeout, f"run {run_id} {name}")


def _attempts(run: run_pb2.Run) -> list[tuple[str, int, int]]:
    return [(s.name, a.number, a.status) for s in run.steps for a in s.attempts]


def _check_cancelled(
    client: Client, run_id: str, actor: str = ACTOR, reason: str = REASON
) -> tuple[run_pb2.Run, run_pb2.RunEvent, run_pb2.RunEvent]:
    """The run is cancelled for good: one CANCEL_REQUESTED event with the actor and reason,
    RUN_CANCELLED last, nothing scheduled, started or completed after the cancel, no attempt
    left scheduled or running. Returns the run and the two events."""
    run = client.get_run(run_id)
    assert run.status == run_pb2.RUN_STATUS_CANCELLED, run
    assert run.HasField("end_time")
    assert list(run.current_steps) == []
    events = _events(client, run_id)
    assert [e.sequence for e in events] == list(range(1, run.last_sequence + 1))
    requested = [e for e in events if e.type == run_pb2.RUN_EVENT_TYPE_CANCEL_REQUESTED]
    assert len(requested) == 1, events
    data = struct_to_dict(requested[0].data)
    assert (data["actor"], data["reason"]) == (actor, reason), data
    after = [e for e in events if e.sequence > requested[0].sequence]
    assert not [e for e in after if e.type in NOT_AFTER_CANCEL], after
    assert events[-1].type == run_pb2.RUN_EVENT_TYPE_RUN_CANCELLED, events[-1]
    cancelled_at = _seconds(requested[0].time)
    for step in run.steps:
        for attempt in step.attempts:
            assert attempt.status not in LIVE_ATTEMPT, (step.name, attempt)
            if attempt.HasField("start_time"):
                assert _seconds(attempt.start_time) <= cancelled_at, (step.name, attempt)
    return run, requested[0], events[-1]


def _still_the_same(client: Client, before: run_pb2.Run) -> None:
    """Nothing happened to the run since `before` (no event, no new or changed attempt)."""
    now = client.get_run(before.id)
    assert now.status == before.status
    assert now.last_sequence == before.last_sequence, now
    assert _attempts(now) == _attempts(before), now


def _error_reason(exc: grpc.RpcError) -> tuple[str, dict[str, str]]:
    """(ErrorInfo reason, metadata) of a refused call."""
    assert isinstance(exc, grpc.Call)
    raw = dict(exc.trailing_metadata() or ()).get("grpc-status-details-bin")
    assert raw is not None, "no rich error details"
    for detail in status_pb2.Status.FromString(raw).details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return str(info.reason), dict(info.metadata)
    raise AssertionError("no ErrorInfo in the error details")


def _worker_events(worker: WorkerProcess, event: str, attempt_id: str) -> list[dict[str, Any]]:
    """The worker's JSON log records of `event` for this attempt."""
    records = []
    for line in worker.output().splitlines():
        if attempt_id in line and event in line:
            record = json.loads(line)
            if record.get("event") == event and record.get("attempt") == attempt_id:
                records.append(record)
    return records


# --- cancel where no handler runs ---------------------------------------------------------------


def test_cancel_pending_run_drops_its_attempt_and_replay_runs_it(
    cluster: Cluster, tmp_path: Path
) -> None:
    cluster.start_server()
    with cluster.client() as client:
        client.register_workflow(cancel_flows.pending)  # no worker yet: the run stays pending
        run = client.start_run("e2e_cancel_pending", {"marks": str(tmp_path)})
        assert client.get_run(run.id).status == run_pb2.RUN_STATUS_PENDING
        attempt_id = run.steps[0].attempts[0].id

        cancelled = client.cancel_run(run.id, actor=ACTOR, reason=REASON)
        assert cancelled.status == run_pb2.RUN_STATUS_CANCELLED
        assert _attempts(cancelled) == [("only", 1, run_pb2.ATTEMPT_STATUS_CANCELLED)]
        assert cancelled.steps[0].status == run_pb2.STEP_STATUS_CANCELLED

        # The step task was published before the cancel: the worker receives it, and the
        # server refuses its claim.
        worker = cluster.start_worker("tests.e2e.cancel_flows")
        refusals = wait_for(
            lambda: _worker_events(worker, "attempt_refused", attempt_id),
            30,
            "the cancelled attempt's claim refused",
        )
        assert [r["reason"] for r in refusals] == ["cancelled"], refusals
        control = client.start_run("e2e_cancel_pending", {"marks": str(tmp_path)})
        assert client.wait_for_run(control.id, timeout=30).status == run_pb2.RUN_STATUS_COMPLETED

        final, _, _ = _check_cancelled(client, run.id)
        assert _attempts(final) == [("only", 1, run_pb2.ATTEMPT_STATUS_CANCELLED)]
        assert not final.steps[0].attempts[0].HasField("start_time")
        assert final.steps[0].attempts[0].worker_id == ""
        assert _marks(tmp_path, "only", run.id) == []
        # Cancelling again is a no-op: no second CANCEL_REQUESTED, the first actor stays.
        again = client.cancel_run(run.id, actor="someone else", reason="again")
        assert again.status == run_pb2.RUN_STATUS_CANCELLED
        _still_the_same(client, final)

        # A cancelled run with no irreversible step replays without allow_irreversible.
        replay = client.replay_run(run.id)
        assert replay.source_run_id == run.id and replay.id != run.id
        assert (replay.workflow_version, replay.trigger) == (run.workflow_version, "manual")
        replayed = client.wait_for_run(replay.id, timeout=30)
        _still_the_same(client, final)

    assert replayed.status == run_pb2.RUN_STATUS_COMPLETED, replayed
    assert struct_to_dict(replayed.payload) == struct_to_dict(final.payload)
    assert _marks(tmp_path, "only", replay.id) == ["started"]


def test_cancel_waiting_run_drops_its_timer(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_server()
    cluster.start_worker("tests.e2e.cancel_flows")
    with cluster.client() as client:
        cluster.wait_registered(client, "e2e_cancel_wait")
        run = client.start_run("e2e_cancel_wait", {"marks": str(tmp_path)})
        waiting = _wait_status(client, run.id, run_pb2.RUN_STATUS_WAITING)
        assert [(s.name, s.status) for s in waiting.steps][-1] == (
            "hold",
            run_pb2.STEP_STATUS_WAITING,
        )

        cancelled = client.cancel_run(run.id, actor=ACTOR, reason=REASON, idempotency_key="c-1")
        assert cancelled.status == run_pb2.RUN_STATUS_CANCELLED
        # Idempotent: the same command again, and another one, change nothing.
        again = client.cancel_run(run.id, actor=ACTOR, reason=REASON, idempotency_key="c-1")
        other = client.cancel_run(run.id, actor="someone else", reason="also")
        for later in (again, other):
            assert later.status == run_pb2.RUN_STATUS_CANCELLED
            assert later.last_sequence == cancelled.last_sequence

        due = _seconds(waiting.steps[0].end_time) + cancel_flows.WAIT_SECONDS
        time.sleep(max(0.0, due + 1.0 - time.time()))  # past the dropped timer's due time
        final, requested, _ = _check_cancelled(client, run.id)
        _still_the_same(client, cancelled)

    assert _seconds(requested.time) < due, "the test cancelled after the wait: make it longer"

    assert struct_to_dict(requested.data)["idempotency_key"] == "c-1"
    assert [(s.name, s.status) for s in final.steps] == [
        ("before_wait", run_pb2.STEP_STATUS_COMPLETED),
        ("hold", run_pb2.STEP_STATUS_CANCELLED),
    ]
    assert _marks(tmp_path, "before_wait", run.id) == ["started"]
    assert _marks(tmp_path, "after_wait", run.id) == []


def test_cancel_retrying_run_drops_its_retry(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_server()
    cluster.start_worker("tests.e2e.cancel_flows")
    with cluster.client() as client:
        cluster.wait_registered(client, "e2e_cancel_retry")
        run = client.start_run("e2e_cancel_retry", {"marks": str(tmp_path)})
        retrying = _wait_status(client, run.id, run_pb2.RUN_STATUS_RETRYING)
        assert retrying.steps[0].status == run_pb2.STEP_STATUS_RETRYING

        cancelled = client.cancel_run(run.id, actor=ACTOR, reason=REASON)
        assert cancelled.status == run_pb2.RUN_STATUS_CANCELLED
        due = _seconds(retrying.steps[0].attempts[0].end_time) + cancel_flows.RETRY_DELAY
        time.sleep(max(0.0, due + 1.0 - time.time()))  # past the dropped retry's due time
        final, requested, _ = _check_cancelled(client, run.id)
        _still_the_same(client, cancelled)

    assert _seconds(requested.time) < due, "the test cancelled after the backoff: make it longer"

    flaky = final.steps[0]
    assert flaky.status == run_pb2.STEP_STATUS_CANCELLED
    assert flaky.attempts[0].status == run_pb2.ATTEMPT_STATUS_FAILED
    assert flaky.attempts[0].error.type == "RetryableError"
    # The retry's timer row, if any, was cancelled before it was due: never started.
    assert [(a.number, a.status, a.HasField("start_time")) for a in flaky.attempts[1:]] in (
        [],
        [(2, run_pb2.ATTEMPT_STATUS_CANCELLED, False)],
    )
    assert _marks(tmp_path, "flaky", run.id) == ["started"]


# --- cancel of running handlers -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("workflow", "step", "next_step"),
    [
        ("e2e_cancel_async", "sleeper", "after_sleeper"),
        ("e2e_cancel_sync", "poller", "after_poller"),
    ],
    ids=["async_handler", "sync_handler_polling"],
)
def test_cancel_reaches_a_running_handler_through_its_attempt_stream(
    cluster: Cluster, tmp_path: Path, workflow: str, step: str, next_step: str
) -> None:
    # Heartbeats every 20 s at most: a cancel that waited for one would take seconds.
    cluster.start_server(SQUIDMESH_HEARTBEAT_INTERVAL_MS=HEARTBEAT_INTERVAL_MS)
    cluster.start_worker("tests.e2e.cancel_flows")
    with cluster.client() as client:
        cluster.wait_registered(client, workflow)
        run = client.start_run(workflow, {"marks": str(tmp_path), "seconds": 30})
        wait_for(lambda: _marks(tmp_path, step, run.id), 30, f"{step} to start")
        _wait_status(client, run.id, run_pb2.RUN_STATUS_RUNNING)
        time.sleep(0.3)  # well into the handler, away from its claim

        began = time.monotonic()
        response = client.cancel_run(run.id, actor=ACTOR, reason=REASON)
        client.wait_for_run(run.id, timeout=30)
        elapsed = time.monotonic() - began
        assert response.status in (run_pb2.RUN_STATUS_CANCELLING, run_pb2.RUN_STATUS_CANCELLED)

        final, requested, ended = _check_cancelled(client, run.id)
        time.sleep(0.5)  # a retry (0.1 s backoff) or the next step would have started by now
        _still_the_same(client, final)

    to_cancelled = _seconds(ended.time) - _seconds(requested.time)
    print(
        f"{workflow}: CancelRun -> cancelled {elapsed:.3f} s (server events {to_cancelled:.3f} s)"
    )
    assert _marks(tmp_path, step, run.id) == ["started", "cancelled"]
    assert _marks(tmp_path, next_step, run.id) == []
    assert elapsed < PUSH_LATENCY, f"the cancel took {elapsed:.2f} s to stop the handler"
    assert to_cancelled < PUSH_LATENCY
    assert [(s.name, s.status) for s in final.steps] == [(step, run_pb2.STEP_STATUS_CANCELLED)]
    [attempt] = final.steps[0].attempts
    assert attempt.status != run_pb2.ATTEMPT_STATUS_SUCCEEDED
    assert attempt.error.type == "Cancelled", attempt


def test_cancel_ignored_by_a_sync_handler_ends_with_its_lease(
    cluster: Cluster, tmp_path: Path
) -> None:
    cluster.start_server()
    worker = cluster.start_worker("tests.e2e.cancel_flows", concurrency=2)
    handler_seconds = 6.0  # longer than the cancel plus the lease (2 s) and a reconcile pass
    with cluster.client() as client:
        cluster.wait_registered(client, "e2e_cancel_ignored")
        run = client.start_run(
            "e2e_cancel_ignored", {"marks": str(tmp_path), "seconds": handler_seconds}
        )
        wait_for(lambda: _marks(tmp_path, "stubborn", run.id), 30, "stubborn to start")
        running = _wait_status(client, run.id, run_pb2.RUN_STATUS_RUNNING)
        attempt_id = running.steps[0].attempts[0].id

        began = time.monotonic()
        cancelling = client.cancel_run(run.id, actor=ACTOR, reason=REASON, idempotency_key="k")
        assert cancelling.status == run_pb2.RUN_STATUS_CANCELLING
        again = client.cancel_run(run.id, actor=ACTOR, reason=REASON, idempotency_key="k")
        assert again.status == run_pb2.RUN_STATUS_CANCELLING
        assert again.last_sequence == cancelling.last_sequence

        client.wait_for_run(run.id, timeout=30)
        elapsed = time.monotonic() - began
        final, requested, ended = _check_cancelled(client, run.id)

        # The handler returns later: it was told (ctx.cancelled), and its result is refused.
        wait_for(lambda: len(_marks(tmp_path, "stubborn", run.id)) == 2, 30, "stubborn to return")
        refused = wait_for(
            lambda: _worker_events(worker, "attempt_completed", attempt_id),
            30,
            "the late result's answer",
        )
        _still_the_same(client, final)

    to_cancelled = _seconds(ended.time) - _seconds(requested.time)
    print(f"ignored cancel: CancelRun -> cancelled {elapsed:.3f} s (events {to_cancelled:.3f} s)")
    lease = cancel_flows.IGNORED_LEASE
    # Cancelling until the lease ended: it was last renewed at most lease/3 before the cancel
    # (so not at once, and however late a busy machine makes it)...
    assert lease * 2 / 3 - 0.2 <= to_cancelled, to_cancelled
    # ...and cancelled before the handler returned (its own clock, on the same machine).
    finished = read_marks(tmp_path, "stubborn", run.id)[1]
    assert finished.startswith("finished cancelled=True"), finished
    assert _seconds(ended.time) < float(finished.split()[-1]), (ended, finished)
    assert all(r.get("result_refused") for r in refused), refused
    assert _marks(tmp_path, "after_stubborn", run.id) == []
    [attempt] = final.steps[0].attempts
    assert attempt.status == run_pb2.ATTEMPT_STATUS_FAILED, attempt
    assert attempt.error.reason == "worker_lost", attempt
    assert final.steps[0].status == run_pb2.STEP_STATUS_CANCELLED


# --- completed runs: cancel refused, replay -----------------------------------------------------


def _replayable_v2() -> Workflow:
    """Another version of `e2e_cancel_replay`: one step on a queue no worker serves, so a
    replay that took this version would never complete."""
    v2 = Workflow("e2e_cancel_replay", description="version 2")
    for trigger in ("manual", "api"):
        v2.trigger(trigger, payload=[Field("order", "string", required=True)])

    @v2.task(queue="e2e_cancel_nobody")
    def v2_step(input: dict[str, Any]) -> None:
        raise AssertionError("never runs")

    return v2


def test_completed_run_cannot_be_cancelled_and_replays_on_its_version(
    cluster: Cluster, tmp_path: Path
) -> None:
    cluster.start_server()
    cluster.start_worker("tests.e2e.cancel_flows")
    with cluster.client() as client:
        cluster.wait_registered(client, "e2e_cancel_replay")
        source = client.start_run(
            "e2e_cancel_replay", {"order": "A-7", "marks": str(tmp_path)}, trigger="api"
        )
        done = client.wait_for_run(source.id, timeout=30)
        assert done.status == run_pb2.RUN_STATUS_COMPLETED, done

        with pytest.raises(grpc.RpcError) as raised:
            client.cancel_run(source.id, actor=ACTOR, reason=REASON)
        assert isinstance(raised.value, grpc.Call)
        assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert _error_reason(raised.value)[0] == "RUN_TERMINAL"
        _still_the_same(client, done)

        assert client.register_workflow(_replayable_v2()).version == 2

        with pytest.raises(grpc.RpcError) as raised:
            client.replay_run(source.id)
        assert isinstance(raised.value, grpc.Call)
        assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        reason, metadata = _error_reason(raised.value)
        assert (reason, metadata.get("steps")) == ("IRREVERSIBLE_STEPS_COMPLETED", "charge")
        assert "charge" in (raised.value.details() or "")
        assert [r.id for r in client.iter_runs(workflow="e2e_cancel_replay")] == [source.id]

        replay = client.replay_run(source.id, allow_irreversible=True, idempotency_key="r-1")
        same = client.replay_run(source.id, allow_irreversible=True, idempotency_key="r-1")
        assert same.id == replay.id
        replayed = client.wait_for_run(replay.id, timeout=30)
        _still_the_same(client, done)
        runs = sorted(r.id for r in client.iter_runs(workflow="e2e_cancel_replay"))

    assert runs == sorted([source.id, replay.id])
    assert replay.id != source.id and replay.source_run_id == source.id
    assert done.source_run_id == ""
    assert (replay.workflow_version, replayed.workflow_version) == (1, 1)
    assert (done.trigger, replay.trigger, replayed.trigger) == ("api", "api", "api")
    assert struct_to_dict(replayed.payload) == struct_to_dict(done.payload)
    assert struct_to_dict(done.payload) == {
        "order": "A-7",
        "marks": str(tmp_path),
        "seconds": 30,
        "note": "none",
    }
    assert replayed.status == run_pb2.RUN_STATUS_COMPLETED, replayed
    assert [s.name for s in replayed.steps] == ["prepare", "charge"]  # entry step first
    assert struct_to_dict(replayed.context)["prepared"] == {"order": "A-7", "note": "none"}
    for step in ("prepare", "charge"):
        assert _marks(tmp_path, step, source.id) == ["started"]
        assert _marks(tmp_path, step, replay.id) == ["started"]
