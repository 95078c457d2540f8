"""Regressions of what the fuzz suite (test_fuzz_*.py) found, one focused test each."""

from __future__ import annotations

import base64
import json

from grpc import StatusCode, aio
from squidmesh.v1 import run_service_pb2, workflow_service_pb2
from squidmesh.v1.workflow_service_pb2_grpc import WorkflowServiceStub

from tests.integration.test_api import details, register_orders


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
