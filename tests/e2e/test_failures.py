"""Failure semantics with a real server and real worker processes: retries and their errors,
error routes, backoff timing, retry_after, non-retryable errors, attempt timeouts, lost leases
(a SIGSTOPped worker), wait steps (also across a server SIGKILL), log steps and compensation.

Times come from the server (GetRun's attempt timestamps), so they measure what the server
decided, not when this process happened to look."""

from __future__ import annotations

import itertools
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp
from squidmesh.v1 import run_pb2

from tests.e2e.conftest import Cluster
from tests.e2e.marks import read_marks
from tests.support import wait_for
from worker_sdk import Client, struct_to_dict, value_to_python

WORKER = "tests.e2e.failure_flows"
FAILED = run_pb2.ATTEMPT_STATUS_FAILED
SUCCEEDED = run_pb2.ATTEMPT_STATUS_SUCCEEDED
BACKOFF_TOLERANCE = 0.05
"""The issue's window: each gap within ±50 ms of its backoff, on an idle machine. A busy one
adds what a dispatch costs it at the time (_dispatch_latency) to the late side."""


# --- helpers -------------------------------------------------------------------------------------


def _journal(directory: Path, run_id: str) -> list[list[Any]]:
    path = directory / f"journal-{run_id}"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _seconds(ts: Timestamp) -> float:
    assert ts.seconds or ts.nanos, "timestamp not set"
    return float(ts.ToNanoseconds()) / 1e9


def _steps(run: run_pb2.Run) -> dict[str, run_pb2.StepRun]:
    return {s.name: s for s in run.steps}


def _context(run: run_pb2.Run) -> dict[str, Any]:
    return json_format.MessageToDict(run.context)


def _history(client: Client, run_id: str) -> list[run_pb2.RunEvent]:
    """Every event of a terminal run, from sequence 1."""
    return [m.event for m in client.watch_run(run_id, after_sequence=0) if m.HasField("event")]


def _error(failure: run_pb2.Failure) -> tuple[str, str, str]:
    return (failure.reason, failure.type, failure.message)


def _start_cluster(cluster: Cluster, *workflows: str, concurrency: int = 4) -> Client:
    cluster.start_server()
    cluster.start_worker(WORKER, concurrency=concurrency)
    client = cluster.client()
    for workflow in workflows:
        cluster.wait_registered(client, workflow)
    return client


def _dispatch_latency(client: Client, runs: int = 3) -> float:
    """The longest wait, over `runs` one-step runs started one after the other (after one to
    warm up), from a step attempt's creation to its claim by a worker (publish, Redis, the
    worker, the claim): the cost of a dispatch on this machine right now, a few ms when idle,
    much more when busy. Windows on the lateness of timers widen by it, so a busy machine does
    not fail them, and a timer that is wrong by more than the machine's own slowness still
    does."""
    latencies = []
    for _ in range(runs + 1):
        final = client.wait_for_run(client.start_run("f_quick", {}).id, timeout=30)
        attempt = final.steps[0].attempts[0]
        latencies.append(_seconds(attempt.start_time) - _seconds(attempt.create_time))
    print("measured: dispatch latencies (ms)", [round(s * 1000, 1) for s in latencies])
    return max(latencies[1:])


# --- 1. retries, exhaustion, error routes --------------------------------------------------------


def test_failing_twice_then_succeeding_and_exhausting_the_attempts(
    cluster: Cluster, tmp_path: Path
) -> None:
    with _start_cluster(cluster, "f_retries") as client:
        ok = client.start_run("f_retries", {"failures": 2, "marks": str(tmp_path)})
        bad = client.start_run("f_retries", {"failures": 5, "marks": str(tmp_path)})
        ok_final = client.wait_for_run(ok.id, timeout=30)
        bad_final = client.wait_for_run(bad.id, timeout=30)

    # Fails twice, succeeds on the third of three attempts.
    assert ok_final.status == run_pb2.RUN_STATUS_COMPLETED, ok_final
    (flaky,) = ok_final.steps
    assert flaky.status == run_pb2.STEP_STATUS_COMPLETED
    assert [a.number for a in flaky.attempts] == [1, 2, 3]
    assert [a.status for a in flaky.attempts] == [FAILED, FAILED, SUCCEEDED]
    for number, attempt in enumerate(flaky.attempts[:2], start=1):
        assert _error(attempt.error) == (
            "handler_error",
            "ValueError",
            f"flaky failure on attempt {number}",
        )
        assert not attempt.error.non_retryable
        assert "ValueError" in struct_to_dict(attempt.error.details)["traceback"]
    assert not flaky.attempts[2].HasField("error")
    assert value_to_python(flaky.attempts[2].output) == {"attempt": 3}
    assert value_to_python(flaky.output) == {"attempt": 3}
    assert _context(ok_final)["flaky"] == {"attempt": 3}
    assert not ok_final.HasField("error")
    assert [m.split()[0] for m in read_marks(tmp_path, "flaky", ok.id)] == ["1", "2", "3"]

    # Always fails: three attempts, then the run fails with the last error, which is also the
    # step's and the last attempt's.
    assert bad_final.status == run_pb2.RUN_STATUS_FAILED, bad_final
    (exhausted,) = bad_final.steps
    assert exhausted.status == run_pb2.STEP_STATUS_FAILED
    assert [a.status for a in exhausted.attempts] == [FAILED, FAILED, FAILED]
    assert [a.error.message for a in exhausted.attempts] == [
        f"flaky failure on attempt {n}" for n in (1, 2, 3)
    ]
    last = ("handler_error", "ValueError", "flaky failure on attempt 3")
    assert _error(exhausted.attempts[2].error) == last
    for failure in (bad_final.error, exhausted.error):
        assert _error(failure) == last
        assert failure.step == "flaky"
        assert failure.attempt_number == 3
    assert len(read_marks(tmp_path, "flaky", bad.id)) == 3

    # Last, as it is the least central: StepRun.error is "the last error, for failed steps"
    # (run.proto), so the step that succeeded on attempt 3 has none.
    assert not flaky.HasField("error"), f"a completed step keeps an error: {_error(flaky.error)}"


def test_an_exhausted_step_follows_its_error_route(cluster: Cluster, tmp_path: Path) -> None:
    with _start_cluster(cluster, "f_error_route", "f_error_complete") as client:
        to_step = client.start_run("f_error_route", {"marks": str(tmp_path)})
        to_complete = client.start_run("f_error_complete", {"marks": str(tmp_path)})
        step_final = client.wait_for_run(to_step.id, timeout=30)
        complete_final = client.wait_for_run(to_complete.id, timeout=30)
        step_history = _history(client, to_step.id)
        complete_history = _history(client, to_complete.id)

    # To another step: the fallback runs, the ok route's step never does, the run completes.
    assert step_final.status == run_pb2.RUN_STATUS_COMPLETED, step_final
    assert [s.name for s in step_final.steps] == ["doomed", "fallback"]
    doomed, fallback = step_final.steps
    assert doomed.status == run_pb2.STEP_STATUS_FAILED
    assert [a.status for a in doomed.attempts] == [FAILED, FAILED]
    assert _error(doomed.error) == ("handler_error", "UnavailableError", "doomed attempt 2")
    assert fallback.status == run_pb2.STEP_STATUS_COMPLETED
    assert _context(step_final)["fallback"] == {"recovered": True}
    assert "celebrated" not in _context(step_final)
    assert not step_final.HasField("error")
    assert len(read_marks(tmp_path, "doomed", to_step.id)) == 2
    assert len(read_marks(tmp_path, "fallback", to_step.id)) == 1
    assert read_marks(tmp_path, "celebrate", to_step.id) == []
    transitions = [
        (e.step, struct_to_dict(e.data)["to"])
        for e in step_history
        if e.type == run_pb2.RUN_EVENT_TYPE_TRANSITION
    ]
    assert transitions == [("doomed", "fallback"), ("fallback", "complete")]

    # To "complete": the run completes right after the exhausted step.
    assert complete_final.status == run_pb2.RUN_STATUS_COMPLETED, complete_final
    assert [s.name for s in complete_final.steps] == ["doomed"]
    (doomed,) = complete_final.steps
    assert doomed.status == run_pb2.STEP_STATUS_FAILED
    assert [a.status for a in doomed.attempts] == [FAILED, FAILED]
    assert not complete_final.HasField("error")
    assert read_marks(tmp_path, "celebrate", to_complete.id) == []
    transitions = [
        (e.step, struct_to_dict(e.data)["to"])
        for e in complete_history
        if e.type == run_pb2.RUN_EVENT_TYPE_TRANSITION
    ]
    assert transitions == [("doomed", "complete")]


# --- 2. backoff, retry_after, non-retryable errors -------------------------------------------


def _gaps(step: run_pb2.StepRun) -> list[float]:
    """Seconds from each attempt's end to the next attempt's start (its claim by a worker)."""
    a = step.attempts
    return [_seconds(a[i + 1].start_time) - _seconds(a[i].end_time) for i in range(len(a) - 1)]


def _scheduled_delays(history: list[run_pb2.RunEvent], step: str) -> list[float]:
    """The delay_ms the server chose for each retry of `step`, from its events."""
    return [
        struct_to_dict(e.data)["delay_ms"]
        for e in history
        if e.type == run_pb2.RUN_EVENT_TYPE_ATTEMPT_SCHEDULED
        and e.step == step
        and e.attempt_number > 1
    ]


def test_exponential_backoff_and_retry_after_are_kept(cluster: Cluster, tmp_path: Path) -> None:
    with _start_cluster(cluster, "f_backoff", "f_retry_after", "f_quick") as client:
        slack = _dispatch_latency(client)
        # One run at a time: the gaps measure the timers, not two runs competing for 2 cores.
        exp = client.start_run("f_backoff", {"marks": str(tmp_path)})
        exp_final = client.wait_for_run(exp.id, timeout=30)
        exp_history = _history(client, exp.id)
        after = client.start_run("f_retry_after", {"marks": str(tmp_path)})
        after_final = client.wait_for_run(after.id, timeout=30)
        after_history = _history(client, after.id)
        slack = max(slack, _dispatch_latency(client))  # the load may have changed meanwhile
    late = BACKOFF_TOLERANCE + slack
    print(f"measured: dispatch latency {slack * 1000:.1f} ms")

    assert exp_final.status == run_pb2.RUN_STATUS_COMPLETED, exp_final
    (step,) = exp_final.steps
    assert [a.status for a in step.attempts] == [FAILED, FAILED, FAILED, SUCCEEDED]
    assert _scheduled_delays(exp_history, "backs_off") == [100, 200, 400]
    # The first retry (100 ms) went back to the worker that failed, which claimed it when due.
    held = [
        struct_to_dict(e.data).get("held_by")
        for e in exp_history
        if e.type == run_pb2.RUN_EVENT_TYPE_ATTEMPT_SCHEDULED and e.attempt_number > 1
    ]
    assert held == [step.attempts[0].worker_id, None, None]
    assert step.attempts[1].worker_id == step.attempts[0].worker_id
    gaps = _gaps(step)
    print("measured: backoff gaps (ms)", [round(g * 1000, 1) for g in gaps])
    for gap, expected in zip(gaps, (0.1, 0.2, 0.4), strict=True):
        assert -BACKOFF_TOLERANCE <= gap - expected <= late, (
            f"gaps {[round(g * 1000) for g in gaps]} ms, expected 100/200/400 ms"
            f" -50/+{late * 1000:.0f}"
        )

    # retry_after (0.3 s) overrides the policy's 5 s backoff, once.
    assert after_final.status == run_pb2.RUN_STATUS_COMPLETED, after_final
    (step,) = after_final.steps
    assert [a.status for a in step.attempts] == [FAILED, SUCCEEDED]
    assert _error(step.attempts[0].error) == (
        "handler_error",
        "RetryableError",
        "busy: try again in 300 ms",
    )
    assert _scheduled_delays(after_history, "patient") == [300]
    (gap,) = _gaps(step)
    print(f"measured: retry_after gap {gap * 1000:.1f} ms")
    assert -BACKOFF_TOLERANCE <= gap - 0.3 <= late, (
        f"gap {gap * 1000:.0f} ms, expected 300 -50/+{late * 1000:.0f}"
    )


def test_non_retryable_errors_skip_the_retries(cluster: Cluster, tmp_path: Path) -> None:
    with _start_cluster(cluster, "f_non_retryable") as client:
        runs = {
            kind: client.start_run("f_non_retryable", {"kind": kind, "marks": str(tmp_path)})
            for kind in ("sdk", "listed", "other")
        }
        finals = {kind: client.wait_for_run(r.id, timeout=30) for kind, r in runs.items()}
        histories = {kind: _history(client, r.id) for kind, r in runs.items()}

    def retry_reason(kind: str) -> str:
        (failed,) = [e for e in histories[kind] if e.type == run_pb2.RUN_EVENT_TYPE_STEP_FAILED]
        return str(struct_to_dict(failed.data)["retry"])

    # The SDK's NonRetryableError: one attempt, although the policy allows four.
    sdk = finals["sdk"]
    assert sdk.status == run_pb2.RUN_STATUS_FAILED, sdk
    (step,) = sdk.steps
    assert [a.status for a in step.attempts] == [FAILED]
    assert _error(sdk.error) == ("handler_error", "NonRetryableError", "will never work")
    assert sdk.error.non_retryable
    assert struct_to_dict(sdk.error.details) == {"code": 7}
    assert retry_reason("sdk") == "non_retryable"
    assert len(read_marks(tmp_path, "choosy", runs["sdk"].id)) == 1

    # An error type the policy lists as non-retryable: one attempt.
    listed = finals["listed"]
    assert listed.status == run_pb2.RUN_STATUS_FAILED, listed
    (step,) = listed.steps
    assert [a.status for a in step.attempts] == [FAILED]
    assert _error(listed.error) == ("handler_error", "DeclinedError", "card declined")
    assert retry_reason("listed") == "non_retryable"
    assert len(read_marks(tmp_path, "choosy", runs["listed"].id)) == 1

    # The same step with any other error uses all four attempts.
    other = finals["other"]
    assert other.status == run_pb2.RUN_STATUS_FAILED, other
    (step,) = other.steps
    assert [a.status for a in step.attempts] == [FAILED] * 4
    assert _error(other.error) == ("handler_error", "ValueError", "transient trouble 4")
    assert retry_reason("other") == "attempts_exhausted"
    assert len(read_marks(tmp_path, "choosy", runs["other"].id)) == 4


# --- 3. attempt timeouts and lost leases ---------------------------------------------------------


def _log_lines(output: str, event: str) -> list[dict[str, Any]]:
    """The JSON log lines of a process whose event is `event`."""
    lines = []
    for line in output.splitlines():
        if event not in line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == event:
            lines.append(record)
    return lines


def test_an_attempt_past_its_timeout_fails_as_timed_out_and_is_retried(
    cluster: Cluster, tmp_path: Path
) -> None:
    cluster.start_server()
    worker = cluster.start_worker(WORKER, concurrency=4)
    with cluster.client() as client:
        for workflow in ("f_timeout", "f_timeout_sync", "f_quick"):
            cluster.wait_registered(client, workflow)
        slack = _dispatch_latency(client)
        # Async: attempt 1 would sleep 10 s; the 0.5 s timeout ends it.
        run = client.start_run("f_timeout", {"seconds": 10, "marks": str(tmp_path)})
        final = client.wait_for_run(run.id, timeout=30)
        # Sync: attempt 1 ignores the cancellation and returns after 2.5 s, too late.
        stubborn = client.start_run("f_timeout_sync", {"seconds": 2.5, "marks": str(tmp_path)})
        stubborn_done = client.wait_for_run(stubborn.id, timeout=30)
        wait_for(
            lambda: read_marks(tmp_path, "stubborn:late", stubborn.id), 10, "the late sync result"
        )

        def refused() -> list[dict[str, Any]]:
            return [
                r
                for r in _log_lines(worker.output(), "attempt_completed")
                if r.get("run_id") == stubborn.id and r.get("result_refused")
            ]

        refusals = wait_for(refused, 10, "the worker to log the refusal of the late result")
        print("measured: late result refused:", [r["result_refused"] for r in refusals])
        stubborn_final = client.get_run(stubborn.id)
        slack = max(slack, _dispatch_latency(client))

    for result in (final, stubborn_done, stubborn_final):
        assert result.status == run_pb2.RUN_STATUS_COMPLETED, result
        (step,) = result.steps
        assert [a.status for a in step.attempts] == [FAILED, SUCCEEDED]
        first = step.attempts[0]
        assert _error(first.error) == (
            "timed_out",
            "TimedOut",
            "the attempt did not finish within its timeout of 500 ms",
        )
        # Ended by its deadline (0.5 s after the claim), long before the handler would have
        # (10 s, 2.5 s): the server's timer, not the late result, ended it.
        duration = _seconds(first.end_time) - _seconds(first.start_time)
        print(f"measured: timed-out attempt 1 of {step.name} ran {duration * 1000:.1f} ms")
        assert 0.5 <= duration < 1.2 + slack, f"attempt 1 ran {duration:.3f} s"
        assert value_to_python(step.attempts[1].output)["attempt"] == 2
        assert value_to_python(step.output)["attempt"] == 2
    assert [m.split()[0] for m in read_marks(tmp_path, "sleepy", run.id)] == ["1", "2"]
    assert [r["attempt_number"] for r in refusals] == [1]


def test_a_worker_that_stops_heartbeating_loses_its_attempt(
    cluster: Cluster, tmp_path: Path
) -> None:
    cluster.start_server()
    # One slot: while attempt 1 runs, the stopped worker reads nothing more from Redis.
    stopped = cluster.start_worker(WORKER, concurrency=1)
    with cluster.client() as client:
        cluster.wait_registered(client, "f_lease")
        run = client.start_run("f_lease", {"seconds": 2.0, "marks": str(tmp_path)})
        wait_for(lambda: read_marks(tmp_path, "stalls", run.id), 30, "attempt 1 to start")
        os.kill(stopped.proc.pid, signal.SIGSTOP)  # mid-step: no more heartbeats
        try:
            cluster.start_worker(WORKER, concurrency=1)  # takes the retry
            final = client.wait_for_run(run.id, timeout=30)
        finally:
            os.kill(stopped.proc.pid, signal.SIGCONT)
        # The stopped worker wakes up, its handler returns, and it reports attempt 1's result.
        wait_for(lambda: read_marks(tmp_path, "stalls:late", run.id), 10, "the late handler")

        def refused() -> list[dict[str, Any]]:
            return [
                r
                for r in _log_lines(stopped.output(), "attempt_completed")
                if r.get("run_id") == run.id and r.get("result_refused")
            ]

        refusals = wait_for(refused, 10, "the stopped worker to log its refused result")
        print("measured: late result refused:", [r["result_refused"] for r in refusals])
        after = client.get_run(run.id)

    assert final.status == run_pb2.RUN_STATUS_COMPLETED, final
    stopped_pid = int(read_marks(tmp_path, "stalls", run.id)[0].split()[1])
    assert stopped_pid == stopped.proc.pid
    assert [r["attempt_number"] for r in refusals] == [1]
    # Nothing changed after the late result: attempt 1 stays lost, attempt 2's output stands.
    for result in (final, after):
        assert result.status == run_pb2.RUN_STATUS_COMPLETED
        (step,) = result.steps
        assert [a.status for a in step.attempts] == [FAILED, SUCCEEDED]
        assert step.attempts[0].error.reason == "worker_lost"
        assert step.attempts[0].worker_id != step.attempts[1].worker_id
        output = value_to_python(step.output)
        assert output["attempt"] == 2
        assert output["pid"] != stopped.proc.pid
        assert value_to_python(step.attempts[1].output) == output
        assert not step.attempts[0].HasField("output")
        assert _context(result)["stalls"] == output
    assert after.last_sequence == final.last_sequence  # no event recorded for the late result


# --- 4. wait steps -------------------------------------------------------------------------------


def test_a_wait_step_delays_its_successor(cluster: Cluster, tmp_path: Path) -> None:
    with _start_cluster(cluster, "f_wait", "f_quick") as client:
        slack = _dispatch_latency(client)
        run = client.start_run("f_wait", {"marks": str(tmp_path)})
        final = client.wait_for_run(run.id, timeout=30)
        history = _history(client, run.id)
        slack = max(slack, _dispatch_latency(client))

    assert final.status == run_pb2.RUN_STATUS_COMPLETED, final
    steps = _steps(final)
    assert [s.name for s in final.steps] == ["before", "hold", "after"]
    assert steps["hold"].status == run_pb2.STEP_STATUS_COMPLETED
    before_end = _seconds(steps["before"].end_time)
    successor = steps["after"].attempts[0]
    # The wait decides when the successor is scheduled (its attempt's create_time). Its claim
    # (start_time) adds the dispatch to a worker, which is not the wait's doing.
    scheduled = _seconds(successor.create_time) - before_end
    started = _seconds(successor.start_time) - before_end
    print(
        f"measured: 300 ms wait: successor scheduled {scheduled * 1000:.1f} ms,"
        f" started {started * 1000:.1f} ms after its predecessor ended"
    )
    assert 0.3 <= scheduled <= 0.4 + slack, (
        f"successor scheduled {scheduled * 1000:.0f} ms after (dispatch {slack * 1000:.0f} ms)"
    )
    assert started >= 0.3, f"successor started {started * 1000:.0f} ms after"
    # The run was `waiting` meanwhile, and no worker ran anything for the wait.
    assert run_pb2.RUN_STATUS_WAITING in [e.run_status for e in history]
    assert all(not a.worker_id for a in steps["hold"].attempts)


def test_a_wait_survives_a_server_kill_and_ends_on_time(cluster: Cluster, tmp_path: Path) -> None:
    # The server must be down, then serving again, before the wait is due. How long a restart
    # takes depends on the machine's load (7 s on a busy one): measure one, then choose a wait
    # with room for a restart twice as long.
    server = cluster.start_server()
    server.kill()
    began = time.monotonic()
    cluster.start_server()
    restart = time.monotonic() - began
    wait = max(3.0, 2 * restart + 2.0)
    worker = cluster.start_worker(
        WORKER, concurrency=2, env={"E2E_LONG_WAIT_SECONDS": f"{wait:.3f}"}
    )
    with cluster.client() as client:
        cluster.wait_registered(client, "f_long_wait")
        cluster.wait_registered(client, "f_quick")
        run = client.start_run("f_long_wait", {"marks": str(tmp_path)})

        def waiting() -> run_pb2.Run | None:
            current = client.get_run(run.id)
            hold = _steps(current).get("hold")
            return current if hold and hold.status == run_pb2.STEP_STATUS_WAITING else None

        waited = wait_for(waiting, 30, "the wait step to start")
    assert waited.status == run_pb2.RUN_STATUS_WAITING, waited
    wait_start = _seconds(_steps(waited)["before"].end_time)
    due = wait_start + wait
    assert cluster.server is not None
    cluster.server.kill()
    killed_at = time.time()
    cluster.start_server()
    restarted_at = time.time()
    assert killed_at < due - 2.0 and restarted_at < due, (
        f"the restart must happen during the {wait:.1f} s wait (killed {killed_at - wait_start:.2f}"
        f" s, serving {restarted_at - wait_start:.2f} s after its start; a first restart took"
        f" {restart:.2f} s)"
    )
    with cluster.client() as client:
        final = client.wait_for_run(run.id, timeout=30 + wait)
        history = _history(client, run.id)
        slack = _dispatch_latency(client)
    worker.terminate()  # first: a server stopping with a worker's stream open waits 5 s

    assert final.status == run_pb2.RUN_STATUS_COMPLETED, final
    steps = _steps(final)
    successor = steps["after"].attempts[0]
    scheduled = _seconds(successor.create_time) - wait_start
    started = _seconds(successor.start_time) - wait_start
    print(
        f"measured: {wait:.3f} s wait across a kill (a first restart took {restart:.3f} s):"
        f" killed at {killed_at - wait_start:.3f} s, serving again at"
        f" {restarted_at - wait_start:.3f} s, successor scheduled at {scheduled:.3f} s, started"
        f" at {started:.3f} s; dispatch latency {slack * 1000:.1f} ms"
    )
    on_time = (wait, wait + 1.0 + slack)
    assert on_time[0] <= scheduled <= on_time[1], f"successor scheduled {scheduled:.3f} s after"
    assert on_time[0] <= started <= on_time[1], f"successor started {started:.3f} s after"
    completed = [e.step for e in history if e.type == run_pb2.RUN_EVENT_TYPE_STEP_COMPLETED]
    assert completed == ["before", "hold", "after"]
    assert len(read_marks(tmp_path, "after", run.id)) == 1


# --- 5. log steps --------------------------------------------------------------------------------


def test_a_log_step_renders_its_message_from_the_context(cluster: Cluster) -> None:
    with _start_cluster(cluster, "f_log") as client:
        run = client.start_run("f_log", {"order_id": "A-7", "who": "ada"})
        final = client.wait_for_run(run.id, timeout=30)
        history = _history(client, run.id)
    server = cluster.server
    assert server is not None

    assert final.status == run_pb2.RUN_STATUS_COMPLETED, final
    assert [s.name for s in final.steps] == ["greet", "announce", "close"]
    announce = _steps(final)["announce"]
    assert announce.status == run_pb2.STEP_STATUS_COMPLETED
    output = value_to_python(announce.output)
    assert set(output) == {"message"}
    message = output["message"]
    # One LOG event, with the same message, between the step it reads and the step after it.
    logs = [e for e in history if e.type == run_pb2.RUN_EVENT_TYPE_LOG]
    assert [(e.step, struct_to_dict(e.data)["message"]) for e in logs] == [("announce", message)]
    order = [(e.type, e.step) for e in history]
    assert order.index((run_pb2.RUN_EVENT_TYPE_STEP_COMPLETED, "greet")) < order.index(
        (run_pb2.RUN_EVENT_TYPE_LOG, "announce")
    )
    assert order.index((run_pb2.RUN_EVENT_TYPE_LOG, "announce")) < order.index(
        (run_pb2.RUN_EVENT_TYPE_STEP_COMPLETED, "close")
    )
    # And one structured line in the server's log.
    lines = [r for r in _log_lines(server.output(), "workflow_log") if r.get("run_id") == run.id]
    assert [(r.get("step"), r.get("message")) for r in lines] == [("announce", message)]
    # The placeholders were filled from the payload and from greet's output ({"name": "Ada",
    # "items": 3}): integers read as the integers they are.
    assert message == "hello Ada: order A-7 (2 ordered) has 3 items"


# --- 6. compensation -----------------------------------------------------------------------------


def test_a_failed_saga_compensates_its_steps_newest_first_exactly_once(
    cluster: Cluster, tmp_path: Path
) -> None:
    with _start_cluster(cluster, "f_saga") as client:
        run = client.start_run("f_saga", {"order": "o-1", "marks": str(tmp_path)})
        final = client.wait_for_run(run.id, timeout=30)
        history = _history(client, run.id)

    # Every execution of the run, in order: charge's compensation fails once and is retried.
    journal = _journal(tmp_path, run.id)
    assert [(step, attempt) for step, attempt, _ in journal] == [
        ("reserve", 1),
        ("charge", 1),
        ("ship", 1),
        ("confirm", 1),
        ("ship:compensate", 1),
        ("charge:compensate", 1),
        ("charge:compensate", 2),
        ("reserve:compensate", 1),
    ]
    executions = {
        step: len(read_marks(tmp_path, step, run.id))
        for step in ("reserve", "charge", "ship", "confirm")
    }
    assert executions == {"reserve": 1, "charge": 1, "ship": 1, "confirm": 1}
    undo = {
        s: read_marks(tmp_path, f"{s}:compensate", run.id) for s in ("reserve", "charge", "ship")
    }
    assert {s: [m.split()[0] for m in lines] for s, lines in undo.items()} == {
        "ship": ["1"],
        "charge": ["1", "2"],  # failed once, then succeeded once
        "reserve": ["1"],
    }
    # Each compensation got its step's input and output.
    for step, _, received in journal:
        if step.endswith(":compensate") and received != "failed":
            undone = step.removesuffix(":compensate")
            assert received["output"] == {"done": f"{undone}:o-1"}
            assert received["input"]["order"] == "o-1"

    # The run failed with the original error and the summary of the compensations.
    assert final.status == run_pb2.RUN_STATUS_FAILED, final
    assert _error(final.error) == ("handler_error", "NonRetryableError", "confirmation refused")
    assert final.error.step == "confirm"
    details = struct_to_dict(final.error.details)
    assert details["order"] == "o-1"
    summary = details["compensation"]
    assert [(c["step"], c["status"]) for c in summary] == [
        ("ship", "completed"),
        ("charge", "completed"),
        ("reserve", "completed"),
    ]

    steps = _steps(final)
    for name in ("reserve", "charge", "ship"):
        assert steps[name].status == run_pb2.STEP_STATUS_COMPLETED
        compensation = steps[f"{name}:compensate"]
        assert compensation.compensates == name
        assert compensation.status == run_pb2.STEP_STATUS_COMPLETED
        assert compensation.attempts[-1].status == SUCCEEDED
    assert steps["confirm"].status == run_pb2.STEP_STATUS_FAILED
    charge_undo = steps["charge:compensate"]
    assert [a.status for a in charge_undo.attempts] == [FAILED, SUCCEEDED]
    assert _error(charge_undo.attempts[0].error) == (
        "handler_error",
        "ConnectionError",
        "refund service unreachable",
    )
    # Newest first, one at a time: each compensation started after the previous one ended.
    ordered = [steps[f"{s}:compensate"] for s in ("ship", "charge", "reserve")]
    for earlier, later in itertools.pairwise(ordered):
        assert _seconds(earlier.end_time) <= _seconds(later.attempts[0].start_time)

    # The run was compensating from the failure until the last compensation ended (the events
    # of that last change carry the run's status after it: failed).
    (last_undo,) = [
        e
        for e in history
        if e.type == run_pb2.RUN_EVENT_TYPE_STEP_COMPLETED and e.step == "reserve:compensate"
    ]
    (started,) = [e for e in history if e.type == run_pb2.RUN_EVENT_TYPE_COMPENSATION_STARTED]
    assert started.run_status == run_pb2.RUN_STATUS_COMPENSATING
    assert struct_to_dict(started.data)["steps"] == ["ship", "charge", "reserve"]
    assert history[-1].type == run_pb2.RUN_EVENT_TYPE_RUN_FAILED
    assert history[-1].run_status == run_pb2.RUN_STATUS_FAILED
    meanwhile = [
        (
            e.sequence,
            run_pb2.RunEventType.Name(e.type),
            e.step,
            run_pb2.RunStatus.Name(e.run_status),
        )
        for e in history
        if started.sequence <= e.sequence < last_undo.sequence
    ]
    assert [m for m in meanwhile if m[3] != "RUN_STATUS_COMPENSATING"] == [], meanwhile

    # Last, as it is the least central: the summary gives an error only for a compensation that
    # failed; charge's compensation completed (its first attempt's error is on that attempt).
    assert summary == [
        {"step": "ship", "status": "completed"},
        {"step": "charge", "status": "completed"},
        {"step": "reserve", "status": "completed"},
    ]


# --- 7. progress details ------------------------------------------------------------------------


def test_heartbeat_progress_shows_on_the_running_attempt(cluster: Cluster) -> None:
    with _start_cluster(cluster, "f_progress") as client:
        run = client.start_run("f_progress", {"seconds": 3.0})

        def with_progress() -> run_pb2.Attempt | None:
            attempts = _steps(client.get_run(run.id))["crunch"].attempts
            return attempts[0] if attempts and attempts[0].progress.fields else None

        # The worker sends it with its next heartbeat (a third of the 2 s lease at most): it
        # shows while the 3 s attempt runs, however busy the machine (a worker that late
        # would have lost its lease).
        seen = wait_for(with_progress, 30, "progress on the attempt", every=0.05)
        assert seen.status == run_pb2.ATTEMPT_STATUS_RUNNING, seen
        assert struct_to_dict(seen.progress) == {"rows": 1200, "phase": "loading"}
        final = client.wait_for_run(run.id, timeout=30)
    assert final.status == run_pb2.RUN_STATUS_COMPLETED
    attempt = _steps(final)["crunch"].attempts[0]
    assert attempt.status == SUCCEEDED
    assert struct_to_dict(attempt.progress) == {"rows": 1200, "phase": "loading"}


def test_an_output_larger_than_the_server_reads_fails_its_attempt_not_the_worker(
    cluster: Cluster,
) -> None:
    """20 MiB of output is more than an attempt-stream message may hold: sent, it would end
    the stream, and the worker would send it again forever. The worker reports a non-retryable
    OutputTooLarge instead, and goes on serving."""
    with _start_cluster(cluster, "f_huge_output", "f_progress") as client:
        run = client.start_run("f_huge_output", {})
        final = client.wait_for_run(run.id, timeout=60)
        after = client.start_run("f_progress", {"seconds": 0.1})
        assert client.wait_for_run(after.id, timeout=60).status == run_pb2.RUN_STATUS_COMPLETED
    assert final.status == run_pb2.RUN_STATUS_FAILED
    (attempt,) = _steps(final)["bloat"].attempts  # not retried
    assert (attempt.error.type, attempt.error.non_retryable) == ("OutputTooLarge", True)
    assert "more than the server reads" in attempt.error.message
