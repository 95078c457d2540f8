"""Regressions of what the fuzz suite (tests/integration/fuzz) found, one focused test each."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest
from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2
from grpc import StatusCode, aio
from squidmesh.v1 import run_pb2, run_service_pb2, workflow_service_pb2
from squidmesh.v1 import worker_service_pb2 as wpb
from squidmesh.v1.run_service_pb2_grpc import RunServiceStub
from squidmesh.v1.workflow_service_pb2_grpc import WorkflowServiceStub
from squidmesh.values import MAX_DEPTH

from tests.integration.fuzz.harness import identity
from tests.integration.fuzz.hostile import deep_value_bytes, field_bytes, fill_value, nested
from tests.integration.test_api import (
    Protocol,
    count_rows,
    definition,
    details,
    error_info,
    register_orders,
    scheduled_attempt,
    start_and_claim,
)
from tests.integration.test_hostile_input import refused
from worker_sdk import struct_to_dict


async def test_page_tokens_of_the_wrong_shape_are_invalid_argument(channel: aio.Channel) -> None:
    runs = await register_orders(channel)
    workflows = WorkflowServiceStub(channel)
    for shape in [{}, {"name": 5}, {"name": None}, {"t": "x"}, [1]]:
        token = base64.urlsafe_b64encode(json.dumps(shape).encode()).decode()
        for call in (
            workflows.ListWorkflows(workflow_service_pb2.ListWorkflowsRequest(page_token=token)),
            runs.ListRuns(run_service_pb2.ListRunsRequest(page_token=token)),
        ):
            try:
                await call
            except aio.AioRpcError as error:
                assert error.code() == StatusCode.INVALID_ARGUMENT, (shape, error.details())
                assert details(error)[1] == [("page_token", "was not returned by a previous call")]
            else:
                raise AssertionError(f"page token {shape} was accepted")


async def test_timestamps_and_durations_out_of_their_range_are_invalid_argument(
    channel: aio.Channel, database_url: str
) -> None:
    runs = await register_orders(channel)
    for stamp in [
        timestamp_pb2.Timestamp(seconds=2**62),
        timestamp_pb2.Timestamp(seconds=-(2**63)),
        timestamp_pb2.Timestamp(seconds=253_402_300_800),  # 10000-01-01
        timestamp_pb2.Timestamp(seconds=1, nanos=-5),
    ]:
        request = run_service_pb2.ListRunsRequest(create_time_after=stamp, create_time_before=stamp)
        violations = await refused(runs.ListRuns(request))
        assert [f for f, _ in violations] == ["create_time_after", "create_time_before"]
    # The ends of the range are timestamps like any other.
    for seconds in (-62_135_596_800, 253_402_300_799):
        stamp = timestamp_pb2.Timestamp(seconds=seconds, nanos=999_999_999)
        await runs.ListRuns(run_service_pb2.ListRunsRequest(create_time_after=stamp))

    workflows = WorkflowServiceStub(channel)
    bad = definition("durations")
    bad.steps[0].attempt_timeout.CopyFrom(duration_pb2.Duration(seconds=5, nanos=-1))
    bad.steps[1].heartbeat_timeout.CopyFrom(duration_pb2.Duration(seconds=-(2**63)))
    violations = await refused(
        workflows.RegisterWorkflow(workflow_service_pb2.RegisterWorkflowRequest(definition=bad))
    )
    assert {f for f, _ in violations} >= {
        "definition.steps[0].attempt_timeout",
        "definition.steps[1].heartbeat_timeout",
    }
    assert await count_rows(database_url, "workflows") == 1  # orders alone


async def test_undecodable_requests_are_invalid_argument(channel: aio.Channel) -> None:
    await register_orders(channel)
    run_id = field_bytes(1, b"00000000-0000-0000-0000-000000000000")
    deep_payload = field_bytes(1, b"orders") + field_bytes(
        3, field_bytes(1, field_bytes(1, b"x") + field_bytes(2, deep_value_bytes(60)))
    )
    for path, data in [
        ("/squidmesh.v1.RunService/StartRun", b"\xff\xff\xff"),
        ("/squidmesh.v1.RunService/StartRun", deep_payload),  # nested past 100 levels
        ("/squidmesh.v1.RunService/GetRun", field_bytes(1, b"\xff\xfe")),  # bad UTF-8
        ("/squidmesh.v1.WorkflowService/ListWorkflows", run_id[:-3]),  # cut short
        ("/squidmesh.v1.WorkerService/RegisterWorker", b"\x0f"),  # no wire type 7
    ]:
        with pytest.raises(aio.AioRpcError) as raised:
            await channel.unary_unary(path, identity, identity)(data, timeout=10)
        assert raised.value.code() == StatusCode.INVALID_ARGUMENT, (path, raised.value.details())
        assert raised.value.details() == "the request cannot be decoded"
        assert error_info(raised.value).reason == "INVALID_ARGUMENT"
    watch = channel.unary_stream("/squidmesh.v1.RunService/WatchRun", identity, identity)(
        b"\xff", timeout=10
    )
    with pytest.raises(aio.AioRpcError) as raised:
        await watch.read()
    assert raised.value.code() == StatusCode.INVALID_ARGUMENT


async def test_undecodable_attempt_stream_messages_are_answered_and_the_stream_lives_on(
    channel: aio.Channel,
) -> None:
    stream = channel.stream_stream(
        "/squidmesh.v1.WorkerService/StreamAttempts",
        identity,
        wpb.StreamAttemptsResponse.FromString,
    )(metadata=(("squidmesh-worker-id", "w"),))

    async def answer() -> wpb.StreamAttemptsResponse:
        message = await asyncio.wait_for(stream.read(), 10)
        assert isinstance(message, wpb.StreamAttemptsResponse)
        return message

    # request_id 7 with a result whose output is nested past protobuf's decoding limit.
    completed = field_bytes(1, b"a") + field_bytes(2, b"t") + field_bytes(3, deep_value_bytes(60))
    await stream.write(b"\x08\x07" + field_bytes(4, completed))
    rejected = await answer()
    assert (rejected.request_id, rejected.WhichOneof("message")) == (7, "rejected")
    # In a batch, the requests that decode are answered as usual, the others rejected.
    heartbeat = wpb.StreamAttemptsRequest(
        request_id=8, heartbeat=wpb.WorkerHeartbeat(worker_id="w")
    )
    bad = b"\x08\x09" + field_bytes(3, b"\xff\xff")
    await stream.write(field_bytes(6, heartbeat.SerializeToString()) + field_bytes(6, bad))
    answers = {a.request_id: a.WhichOneof("message") for a in (await answer(), await answer())}
    assert answers == {8: "heartbeat", 9: "rejected"}
    # Garbage that shows no request_id at all is answered too, and the stream serves on.
    await stream.write(b"\xff\xff\xff")
    assert (await answer()).WhichOneof("message") == "rejected"
    await stream.write(heartbeat.SerializeToString())
    assert (await answer()).WhichOneof("message") == "heartbeat"
    stream.cancel()


async def test_a_batch_that_also_carries_a_request_is_answered_too(channel: aio.Channel) -> None:
    protocol = Protocol(channel)
    beat = wpb.StreamAttemptsRequest(request_id=2, heartbeat=wpb.WorkerHeartbeat(worker_id="w"))
    both = wpb.StreamAttemptsRequest(
        request_id=1,
        started=wpb.AttemptStarted(attempt_id="a", token="t", worker_id="w"),
        batch=[beat],
    )
    await protocol.call.write(both)
    await protocol.call.write(wpb.StreamAttemptsRequest(request_id=3, batch=[beat]))
    answers = []
    for _ in range(4):
        answer = await asyncio.wait_for(protocol.call.read(), 10)
        assert isinstance(answer, wpb.StreamAttemptsResponse)
        answers.append((answer.request_id, answer.WhichOneof("message")))
    assert sorted(answers) == [(1, "rejected"), (2, "heartbeat"), (2, "heartbeat"), (3, "rejected")]


async def test_a_whole_number_past_2_53_in_an_output_can_be_read_and_passed_on(
    channel: aio.Channel, database_url: str
) -> None:
    # A double such as 1e16 is valid JSON, but Postgres reads it back as an integer, which
    # the strict conversion refused: GetRun and the next step's claim answered INTERNAL.
    protocol = Protocol(channel)
    run, attempt_id, token = await start_and_claim(channel, database_url, protocol, "w1")
    output = struct_pb2.Value()
    output.struct_value.update({"big": 1e16, "list": [-1e300]})
    done = await protocol.send(
        completed=wpb.AttemptCompleted(attempt_id=attempt_id, token=token, output=output)
    )
    assert done.result.accepted
    got = await RunServiceStub(channel).GetRun(run_service_pb2.GetRunRequest(run_id=run.id))
    assert struct_to_dict(got.run.steps[0].output.struct_value) == {"big": 1e16, "list": [-1e300]}
    ship_id, ship_token = await scheduled_attempt(database_url, run.id, "ship")
    claimed = await protocol.send(
        started=wpb.AttemptStarted(attempt_id=ship_id, token=ship_token, worker_id="w1")
    )
    assert claimed.start.accepted
    assert struct_to_dict(claimed.start.input.struct_value)["big"] == 1e16


async def test_values_nested_too_deep_to_be_sent_back_are_refused_where_they_enter(
    channel: aio.Channel, database_url: str
) -> None:
    # An output 48 lists deep decoded, was stored, and then no GetRun of its run and no answer
    # on its worker's stream could be decoded any more (protobuf's limit of 100 levels).
    runs = await register_orders(channel)
    request = run_service_pb2.StartRunRequest(workflow="orders")
    request.payload.update({"amount": 1, "deep": nested(MAX_DEPTH)})  # 21 levels with the payload
    violations = await refused(runs.StartRun(request))
    assert (f"payload{'.deep' + '.a' * (MAX_DEPTH - 1)}", "is nested more than 20 levels deep") in (
        violations
    )
    assert await count_rows(database_url, "runs") == 0

    protocol = Protocol(channel)
    run, attempt_id, token = await start_and_claim(channel, database_url, protocol, "w1")
    done = wpb.StreamAttemptsRequest(
        completed=wpb.AttemptCompleted(attempt_id=attempt_id, token=token)
    )
    fill_value(done.completed.output, nested(48, kind="list"))
    answer = await protocol.send(completed=done.completed)
    assert answer.result.accepted, "answered, so that the worker does not send it again"
    got = await RunServiceStub(channel).GetRun(run_service_pb2.GetRunRequest(run_id=run.id))
    assert got.run.steps[0].attempts[0].error.reason == "output_invalid"
    assert got.run.status == run_pb2.RUN_STATUS_FAILED


async def test_a_time_zone_no_file_can_be_named_after_is_invalid_argument(
    channel: aio.Channel,
) -> None:
    workflows = WorkflowServiceStub(channel)
    for zone in ["é" * 250, "America", "/etc/passwd"]:
        bad = definition("cron")
        bad.triggers[0].cron.expression = "0 3 * * *"
        bad.triggers[0].cron.time_zone = zone
        violations = await refused(
            workflows.RegisterWorkflow(workflow_service_pb2.RegisterWorkflowRequest(definition=bad))
        )
        assert "definition.triggers[0].cron.time_zone" in {f for f, _ in violations}, zone


async def test_an_event_key_too_long_for_its_index_is_invalid_argument(
    channel: aio.Channel, database_url: str
) -> None:
    """A correlation key of 1,500 'é' (3,000 bytes) passed every check, then failed the
    published events' btree index (at most 2,704 bytes an entry): UNAVAILABLE with
    ProgramLimitExceeded. Event names, keys and ids are identifiers now (at most 256
    characters), refused before anything is written."""
    runs = RunServiceStub(channel)
    violations = await refused(
        runs.PublishEvent(
            run_service_pb2.PublishEventRequest(
                name="e" * 300, correlation_key="é" * 1500, event_id="i" * 257
            )
        )
    )
    assert [field for field, _ in violations] == ["name", "correlation_key", "event_id"]
    assert await count_rows(database_url, "published_events") == 0
    # At the limit, it is stored.
    published = await runs.PublishEvent(
        run_service_pb2.PublishEventRequest(name="e" * 256, correlation_key="\U0010ffff" * 256)
    )
    assert published.created
