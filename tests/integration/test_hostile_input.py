"""Values a request may carry but no one can store or send back (NUL characters, NaN, integers
past 2^53, identifiers longer than an index entry, durations past a column) are refused where
they enter, with a field violation; nothing is written, and other requests are unaffected. On the
attempt stream, an output or error that cannot be stored fails its attempt for good instead of
wedging the stream, the worker or the run."""

from __future__ import annotations

import asyncio
import contextlib
import math
from typing import Any

import pytest
from google.protobuf import duration_pb2, struct_pb2
from grpc import StatusCode, aio
from squidmesh.v1 import run_pb2, run_service_pb2, workflow_pb2, workflow_service_pb2
from squidmesh.v1 import worker_service_pb2 as wpb
from squidmesh.v1.run_service_pb2_grpc import RunServiceStub
from squidmesh.v1.worker_service_pb2_grpc import WorkerServiceStub
from squidmesh.v1.workflow_service_pb2_grpc import WorkflowServiceStub

from tests.integration.test_api import (
    Protocol,
    count_rows,
    definition,
    details,
    payload,
    register_orders,
    start_and_claim,
)
from worker_sdk import struct_to_dict


async def refused(call: Any) -> list[tuple[str, str]]:
    """The field violations of a call that must fail with INVALID_ARGUMENT."""
    with pytest.raises(aio.AioRpcError) as raised:
        await call
    assert raised.value.code() == StatusCode.INVALID_ARGUMENT, raised.value.details()
    assert len(raised.value.details() or "") <= 1024
    return details(raised.value)[1]


def nan_payload() -> struct_pb2.Struct:
    s = payload(amount=1)
    s.fields["nested"].struct_value.fields["x"].number_value = math.nan
    return s


async def test_start_run_refuses_what_cannot_be_stored_and_writes_nothing(
    channel: aio.Channel, database_url: str
) -> None:
    runs = await register_orders(channel)
    cases: list[tuple[run_service_pb2.StartRunRequest, str]] = [
        (
            run_service_pb2.StartRunRequest(
                workflow="orders", payload=payload(amount=1, note="a\x00b")
            ),
            "payload.note",
        ),
        (
            run_service_pb2.StartRunRequest(
                workflow="orders", payload=payload(amount=1, **{"k\x00": 1})
            ),
            "payload.k\\u0000",
        ),
        (
            run_service_pb2.StartRunRequest(workflow="orders", payload=nan_payload()),
            "payload.nested.x",
        ),
        (
            run_service_pb2.StartRunRequest(
                workflow="orders", payload=payload(amount=1, count=2.0**60)
            ),
            "payload.count",
        ),
        (
            run_service_pb2.StartRunRequest(
                workflow="orders", payload=payload(amount=1), idempotency_key="k" * 3000
            ),
            "idempotency_key",
        ),
        (
            run_service_pb2.StartRunRequest(workflow="ord\x00ers", payload=payload(amount=1)),
            "workflow",
        ),
    ]
    for request, field in cases:
        violations = await refused(runs.StartRun(request))
        assert field in [f for f, _ in violations], violations
    assert await count_rows(database_url, "runs") == 0

    # Forty valid starts sent together with bad ones all succeed.
    good = [
        runs.StartRun(run_service_pb2.StartRunRequest(workflow="orders", payload=payload(amount=i)))
        for i in range(40)
    ]
    bad = [runs.StartRun(request) for request, _ in cases]
    outcomes = await asyncio.gather(*good, *bad, return_exceptions=True)
    assert all(isinstance(o, run_service_pb2.StartRunResponse) for o in outcomes[:40])
    assert all(isinstance(o, aio.AioRpcError) for o in outcomes[40:])
    assert await count_rows(database_url, "runs") == 40


async def test_reads_refuse_unknown_enums_and_huge_names(channel: aio.Channel) -> None:
    runs = await register_orders(channel)
    request = run_service_pb2.ListRunsRequest(statuses=[run_pb2.RUN_STATUS_PENDING, 99])  # type: ignore[list-item]
    assert [f for f, _ in await refused(runs.ListRuns(request))] == ["statuses[1]"]
    big = "w" * (3 << 20)
    workflows = WorkflowServiceStub(channel)
    violations = await refused(
        workflows.GetWorkflow(workflow_service_pb2.GetWorkflowRequest(name=big))
    )
    assert violations == [("name", "must be at most 256 characters")]


async def test_registration_refuses_nul_nan_and_durations_past_their_columns(
    channel: aio.Channel, database_url: str
) -> None:
    workflows = WorkflowServiceStub(channel)
    bad = definition()
    bad.description = "orders\x00"
    bad.triggers[0].payload[1].default_value.number_value = math.inf
    bad.steps[0].attempt_timeout.CopyFrom(duration_pb2.Duration(seconds=30 * 86_400))
    violations = await refused(
        workflows.RegisterWorkflow(workflow_service_pb2.RegisterWorkflowRequest(definition=bad))
    )
    fields = {f for f, _ in violations}
    assert {"definition.description", "definition.triggers[0].payload[1].default_value"} <= fields
    too_long = definition()
    too_long.steps[0].attempt_timeout.CopyFrom(duration_pb2.Duration(seconds=30 * 86_400))
    too_long.steps[1].heartbeat_timeout.CopyFrom(duration_pb2.Duration(seconds=25 * 86_400))
    violations = await refused(
        workflows.RegisterWorkflow(
            workflow_service_pb2.RegisterWorkflowRequest(definition=too_long)
        )
    )
    assert {f for f, _ in violations} == {
        "definition.steps[0].attempt_timeout",
        "definition.steps[1].heartbeat_timeout",
    }
    assert await count_rows(database_url, "workflows") == 0

    # A 30-day wait is a timer like any other.
    long_wait = workflow_pb2.WorkflowDefinition(name="patient")
    long_wait.triggers.add(name="manual", manual=workflow_pb2.ManualTrigger())
    long_wait.steps.add(
        name="rest", wait=workflow_pb2.WaitStep(duration=duration_pb2.Duration(seconds=30 * 86_400))
    )
    await workflows.RegisterWorkflow(
        workflow_service_pb2.RegisterWorkflowRequest(definition=long_wait)
    )
    run = (
        await RunServiceStub(channel).StartRun(run_service_pb2.StartRunRequest(workflow="patient"))
    ).run
    assert run.status == run_pb2.RUN_STATUS_WAITING


async def get_run(channel: aio.Channel, run_id: str) -> run_pb2.Run:
    return (await RunServiceStub(channel).GetRun(run_service_pb2.GetRunRequest(run_id=run_id))).run


@pytest.mark.parametrize(
    ("report", "reason"),
    [
        ("output_nul", "output_invalid"),
        ("output_nan", "output_invalid"),
        ("error_nul", "error_invalid"),
    ],
)
async def test_a_result_that_cannot_be_stored_fails_its_attempt_for_good(
    channel: aio.Channel, database_url: str, report: str, reason: str
) -> None:
    protocol = Protocol(channel)
    run, attempt_id, token = await start_and_claim(channel, database_url, protocol, "w1")
    run_id = run.id
    if report == "error_nul":
        answer = await protocol.send(
            failed=wpb.AttemptFailed(
                attempt_id=attempt_id, token=token, error_type="Boom", message="a\x00b"
            )
        )
    else:
        output = struct_pb2.Value()
        if report == "output_nul":
            output.struct_value.update({"text": "a\x00b"})
        else:
            output.list_value.values.add().number_value = math.nan
        answer = await protocol.send(
            completed=wpb.AttemptCompleted(attempt_id=attempt_id, token=token, output=output)
        )
    assert answer.result.accepted, "answered, so the worker does not send it again"
    run = await get_run(channel, run_id)
    assert run.status == run_pb2.RUN_STATUS_FAILED
    attempt = run.steps[0].attempts[0]
    assert (attempt.error.reason, attempt.error.non_retryable) == (reason, True)
    assert len(run.steps[0].attempts) == 1, "not retried"
    assert struct_to_dict(attempt.error.details)["problems"]


async def test_bad_progress_is_dropped_and_the_lease_still_renewed(
    channel: aio.Channel, database_url: str
) -> None:
    protocol = Protocol(channel)
    run, attempt_id, token = await start_and_claim(channel, database_url, protocol, "w1")
    run_id = run.id
    beat = wpb.WorkerHeartbeat(
        worker_id="w1",
        attempts=[
            wpb.AttemptProgress(attempt_id=attempt_id, token=token, details=payload(x="\x00"))
        ],
    )
    answer = await protocol.send(heartbeat=beat)
    assert list(answer.heartbeat.lost_attempt_ids) == []
    run = await get_run(channel, run_id)
    assert run.steps[0].attempts[0].status == run_pb2.ATTEMPT_STATUS_RUNNING
    assert not run.steps[0].attempts[0].HasField("progress")
    # The stream still works for the attempt.
    done = await protocol.send(
        completed=wpb.AttemptCompleted(
            attempt_id=attempt_id, token=token, output=struct_pb2.Value(string_value="ok")
        )
    )
    assert done.result.accepted


async def test_unreadable_stream_requests_are_answered_not_ignored(channel: aio.Channel) -> None:
    protocol = Protocol(channel)
    started = await protocol.send(
        started=wpb.AttemptStarted(attempt_id="not-a-uuid", token="t", worker_id="w")
    )
    assert not started.start.accepted and started.start.refusal_reason.startswith("invalid:")
    nul = await protocol.send(
        started=wpb.AttemptStarted(
            attempt_id="00000000-0000-0000-0000-000000000000", token="t", worker_id="w\x00"
        )
    )
    assert not nul.start.accepted and nul.start.refusal_reason.startswith("invalid:")
    result = await protocol.send(completed=wpb.AttemptCompleted(attempt_id="x", token="t"))
    assert not result.result.accepted and result.result.refusal_reason.startswith("invalid:")
    empty = await protocol.send()
    assert empty.WhichOneof("message") == "rejected"
    protocol.next_id += 1
    inner = wpb.StreamAttemptsRequest(
        request_id=protocol.next_id, batch=[wpb.StreamAttemptsRequest(request_id=99)]
    )
    await protocol.call.write(wpb.StreamAttemptsRequest(batch=[inner]))
    nested = await protocol.call.read()
    assert isinstance(nested, wpb.StreamAttemptsResponse)
    assert (nested.request_id, nested.WhichOneof("message")) == (protocol.next_id, "rejected")
    # And the stream still serves a good request.
    beat = await protocol.send(heartbeat=wpb.WorkerHeartbeat(worker_id="w1"))
    assert beat.WhichOneof("message") == "heartbeat"


def chain(name: str, steps: int) -> workflow_pb2.WorkflowDefinition:
    d = workflow_pb2.WorkflowDefinition(name=name)
    d.triggers.add(name="manual", manual=workflow_pb2.ManualTrigger())
    for i in range(steps):
        d.steps.add(name=f"s{i}", task=workflow_pb2.TaskStep(handler=f"h.s{i}"))
        d.transitions.add(from_step=f"s{i}", to=f"s{i + 1}" if i + 1 < steps else "complete")
    return d


async def test_an_oversized_definition_is_refused_at_once_and_a_large_one_is_fine(
    channel: aio.Channel, database_url: str
) -> None:
    workflows = WorkflowServiceStub(channel)
    with pytest.raises(aio.AioRpcError) as raised:
        await workflows.RegisterWorkflow(
            workflow_service_pb2.RegisterWorkflowRequest(definition=chain("huge", 40_000))
        )
    assert raised.value.code() == StatusCode.RESOURCE_EXHAUSTED
    assert details(raised.value)[0] == "DEFINITION_TOO_LARGE"
    assert await count_rows(database_url, "workflows") == 0

    # At the limit it registers; meanwhile the server goes on answering other calls.
    registering = asyncio.ensure_future(
        workflows.RegisterWorkflow(
            workflow_service_pb2.RegisterWorkflowRequest(definition=chain("large", 1000))
        )
    )
    while not registering.done():
        await WorkflowServiceStub(channel).ListWorkflows(
            workflow_service_pb2.ListWorkflowsRequest(), timeout=30
        )
        await asyncio.sleep(0.01)
    assert (await registering).workflow.version == 1


async def test_the_attempt_stream_belongs_to_one_worker(channel: aio.Channel) -> None:
    """A stream says whose it is (metadata squidmesh-worker-id): without it the stream is
    refused, and a claim in another worker's name on it is refused too."""
    anonymous = WorkerServiceStub(channel).StreamAttempts()
    # The server refuses the stream as it opens: on a busy machine that may be before this
    # write, which then finds the call over (InvalidStateError) rather than sending.
    with contextlib.suppress(asyncio.InvalidStateError, aio.AioRpcError):
        await anonymous.write(
            wpb.StreamAttemptsRequest(request_id=1, heartbeat=wpb.WorkerHeartbeat())
        )
    assert await anonymous.code() == StatusCode.INVALID_ARGUMENT
    posing = await Protocol(channel, "w1").send(
        started=wpb.AttemptStarted(
            attempt_id="00000000-0000-0000-0000-000000000000", token="t", worker_id="w2"
        )
    )
    assert not posing.start.accepted
    assert posing.start.refusal_reason.startswith("invalid: started.worker_id")
