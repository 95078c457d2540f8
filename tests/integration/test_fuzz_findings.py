"""Regressions of what the fuzz suite (test_fuzz_*.py) found, one focused test each."""

from __future__ import annotations

import base64
import json

from google.protobuf import duration_pb2, timestamp_pb2
from grpc import StatusCode, aio
from squidmesh.v1 import run_service_pb2, workflow_service_pb2
from squidmesh.v1.workflow_service_pb2_grpc import WorkflowServiceStub

from tests.integration.test_api import count_rows, definition, details, register_orders
from tests.integration.test_hostile_input import refused


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
