"""Child runs started by handlers: what reaches StartRun from an async and a sync handler run by
the attempt runner, the repeat of a call the server could not take, and the checks made before
any call. The server here is a recording RunService on a real gRPC port (no Squid Mesh server:
its side, linking the runs, is tested with it)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from squidmesh.v1 import run_pb2, run_service_pb2
from squidmesh.v1 import worker_service_pb2 as pb

from tests.unit.test_sdk_attempts import FakeStream, run_attempt, runner_for
from worker_sdk import StepContext, struct_to_dict
from worker_sdk.children import ChildRuns


class RecordingRunService:
    """Answers StartRun (the only RPC it serves) with a run id per key, as the server does for
    a child's key; the first `unavailable` calls are answered UNAVAILABLE."""

    def __init__(self, unavailable: int = 0) -> None:
        self.requests: list[run_service_pb2.StartRunRequest] = []
        self.unavailable = unavailable

    async def start_run(
        self, request: run_service_pb2.StartRunRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> run_service_pb2.StartRunResponse:
        self.requests.append(request)
        if self.unavailable:
            self.unavailable -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "database unavailable")
        run = run_pb2.Run(id=f"child-of-{request.parent_run_id}-{request.idempotency_key}")
        return run_service_pb2.StartRunResponse(run=run, created=True)


async def serve(service: RecordingRunService) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    start_run = grpc.unary_unary_rpc_method_handler(
        service.start_run,
        request_deserializer=run_service_pb2.StartRunRequest.FromString,
        response_serializer=run_service_pb2.StartRunResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("squidmesh.v1.RunService", {"StartRun": start_run}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture
async def recorded() -> AsyncIterator[tuple[RecordingRunService, ChildRuns]]:
    service = RecordingRunService()
    server, address = await serve(service)
    children = ChildRuns(address, loop=asyncio.get_running_loop(), timeout=5)
    yield service, children
    await children.close()
    await server.stop(None)


def decision() -> pb.StartDecision:
    return pb.StartDecision(accepted=True, run_id="parent-1", step="fan_out", attempt_number=2)


async def test_an_async_handler_starts_a_child_of_its_run_and_step(
    recorded: tuple[RecordingRunService, ChildRuns],
) -> None:
    service, children = recorded

    async def fan_out(input: Any, ctx: StepContext) -> dict[str, str]:
        child = await ctx.start_child_run("ship", {"sku": "mug"}, key="ship-1", trigger="api")
        return {"child": child}

    stream = FakeStream(decision())
    await run_attempt(runner_for(stream, fan_out, children=children))
    [result] = stream.results
    assert isinstance(result, pb.AttemptCompleted), result
    assert result.output.struct_value["child"] == "child-of-parent-1-ship-1"
    [request] = service.requests
    assert (request.parent_run_id, request.parent_step) == ("parent-1", "fan_out")
    assert (request.workflow, request.trigger, request.idempotency_key) == ("ship", "api", "ship-1")
    assert struct_to_dict(request.payload) == {"sku": "mug"}


async def test_a_sync_handler_starts_children_from_its_thread(
    recorded: tuple[RecordingRunService, ChildRuns],
) -> None:
    service, children = recorded

    def fan_out(input: Any, ctx: StepContext) -> list[str]:
        return [ctx.start_child_run_sync("ship", {"n": n}, key=f"ship-{n}") for n in (1, 2)]

    stream = FakeStream(decision())
    with ThreadPoolExecutor(1) as pool:
        await run_attempt(runner_for(stream, fan_out, pool, children=children))
    [result] = stream.results
    assert isinstance(result, pb.AttemptCompleted), result
    ids = [v.string_value for v in result.output.list_value.values]
    assert ids == ["child-of-parent-1-ship-1", "child-of-parent-1-ship-2"]
    assert [r.idempotency_key for r in service.requests] == ["ship-1", "ship-2"]
    assert {r.parent_step for r in service.requests} == {"fan_out"}


async def test_a_start_the_server_could_not_take_is_repeated_with_the_same_key() -> None:
    service = RecordingRunService(unavailable=2)
    server, address = await serve(service)
    children = ChildRuns(address, loop=asyncio.get_running_loop(), timeout=5)
    try:
        ctx = StepContext.from_decision("a1", decision(), children=children)
        assert await ctx.start_child_run("ship", key="k") == "child-of-parent-1-k"
    finally:
        await children.close()
        await server.stop(None)
    assert [r.idempotency_key for r in service.requests] == ["k", "k", "k"]


async def test_arguments_are_checked_before_any_call(
    recorded: tuple[RecordingRunService, ChildRuns],
) -> None:
    service, children = recorded
    ctx = StepContext.from_decision("a1", decision(), children=children)
    with pytest.raises(ValueError, match=r"^start_child_run needs a key$"):
        await ctx.start_child_run("ship", {}, key="")
    with pytest.raises(ValueError, match=r"^start_child_run needs a workflow$"):
        await ctx.start_child_run("", {}, key="k")
    with pytest.raises(TypeError, match=r"^start_child_run: key must be a string$"):
        await ctx.start_child_run("ship", {}, key=7)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="payload must be a JSON object, not a list"):
        await ctx.start_child_run("ship", [1], key="k")  # type: ignore[arg-type]
    # On the event loop's own thread the blocking call would wait for itself.
    with pytest.raises(RuntimeError, match="an async handler awaits start_child_run"):
        ctx.start_child_run_sync("ship", {}, key="k")
    assert service.requests == []


async def test_a_context_made_outside_a_worker_cannot_start_children() -> None:
    ctx = StepContext.from_decision("a1", decision())
    with pytest.raises(RuntimeError, match="no connection to a server"):
        await ctx.start_child_run("ship", {}, key="k")
    with pytest.raises(RuntimeError, match="no connection to a server"):
        ctx.start_child_run_sync("ship", {}, key="k")
