"""The fuzz suite's harness: runs Hypothesis examples against the in-process server, and checks what
every example must leave true — a clear status, nothing written by a refusal, and afterwards a
healthy server that still completes a run.

Examples run in a thread of their own and submit their calls to the test's event loop, where
the server runs; so one server (and one database) serves every example of a test, and the test
can check the server once they are done.

The example counts are small so that CI stays fast, and the examples are derandomized, so a run
is reproducible. Set SQUIDMESH_FUZZ_SCALE (e.g. 10) for more examples, and SQUIDMESH_FUZZ_SEED
to draw other ones.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import psycopg
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from google.rpc import error_details_pb2, status_pb2
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from squidmesh.v1 import (
    run_pb2,
    run_service_pb2,
    schedule_service_pb2,
    workflow_pb2,
    workflow_service_pb2,
)
from squidmesh.v1 import worker_service_pb2 as wpb
from squidmesh.v1.run_service_pb2_grpc import RunServiceStub
from squidmesh.v1.workflow_service_pb2_grpc import WorkflowServiceStub

from server.app import SERVICE_NAMES
from server.store.db import libpq_url
from tests.integration.test_api import Protocol, definition, payload, scheduled_attempt

T = TypeVar("T")

CLEAR = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
"""What a refused request may be answered: never INTERNAL or UNKNOWN."""

WORKFLOW_METHODS = workflow_service_pb2.DESCRIPTOR.services_by_name[
    "WorkflowService"
].methods_by_name
RUN_METHODS = run_service_pb2.DESCRIPTOR.services_by_name["RunService"].methods_by_name
SCHEDULE_METHODS = schedule_service_pb2.DESCRIPTOR.services_by_name[
    "ScheduleService"
].methods_by_name

CALL_TIMEOUT = 30.0
"""Seconds any one call of an example may take: past it, the server hangs on the input."""

_SCALE = float(os.environ.get("SQUIDMESH_FUZZ_SCALE", "1"))
_SEED = os.environ.get("SQUIDMESH_FUZZ_SEED")


def _settings(examples: int) -> settings:
    return settings(
        max_examples=max(1, round(examples * _SCALE)),
        derandomize=_SEED is None,
        deadline=None,  # calls on a busy 2-core machine vary
        database=None,
        phases=(Phase.explicit, Phase.generate, Phase.shrink),
        # One server for all examples is the point: its fixtures are function-scoped.
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )


async def fuzz(
    strategy: st.SearchStrategy[T],
    check: Callable[[T], Awaitable[None] | None],
    examples: int,
) -> None:
    """Runs `check` on `examples` values drawn from `strategy` (scaled by SQUIDMESH_FUZZ_SCALE).
    `check` may be a coroutine function (run on this loop) or a plain blocking function (run
    in the examples' thread, e.g. calls of the blocking SDK client)."""
    loop = asyncio.get_running_loop()

    def example(value: T) -> None:
        result = check(value)
        if asyncio.iscoroutine(result):
            future = asyncio.run_coroutine_threadsafe(result, loop)
            try:
                future.result(CALL_TIMEOUT * 4)
            finally:
                future.cancel()

    test = settings(_settings(examples))(given(strategy)(example))
    if _SEED is not None:
        test = seed(int(_SEED))(test)
    await asyncio.to_thread(test)


def assert_clear(error: grpc.RpcError, what: object = "") -> None:
    """A refusal with a clear status, its message bounded, and (unless gRPC itself refused an
    oversized message) the ErrorInfo every refusal carries."""
    assert isinstance(error, aio.AioRpcError | grpc.Call), error
    code = error.code()
    assert code in CLEAR, f"{code.name}: {error.details()!r} for {_short(what)}"
    assert len(error.details() or "") <= 1024, f"unbounded error message for {_short(what)}"
    if code != grpc.StatusCode.RESOURCE_EXHAUSTED:
        assert _has_error_info(error), f"{code.name} without ErrorInfo for {_short(what)}"


def _has_error_info(error: aio.AioRpcError | grpc.Call) -> bool:
    raw = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin")
    if not isinstance(raw, bytes):
        return False
    info = error_details_pb2.ErrorInfo()
    return any(d.Unpack(info) for d in status_pb2.Status.FromString(raw).details)


def _short(what: object) -> str:
    text = repr(what)
    return text if len(text) <= 600 else text[:600] + "…"


def identity(data: bytes) -> bytes:
    """The serializer of raw calls: their requests and answers are bytes."""
    return data


def path(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


async def call(channel: aio.Channel, method: MethodDescriptor, request: Message | bytes) -> Any:
    """Calls any unary or server-streaming RPC with a message, or with raw bytes as the
    serialized request (then the answer is bytes too). A server stream answers with its first
    message, or None when it ends at once."""
    raw = isinstance(request, bytes)
    data = request if isinstance(request, bytes) else request.SerializeToString()
    decode = identity if raw else GetMessageClass(method.output_type).FromString
    if method.server_streaming:
        stream = channel.unary_stream(path(method), identity, decode)(data, timeout=CALL_TIMEOUT)
        try:
            first = await asyncio.wait_for(stream.read(), CALL_TIMEOUT)
        finally:
            stream.cancel()
        return None if first is aio.EOF else first
    return await channel.unary_unary(path(method), identity, decode)(data, timeout=CALL_TIMEOUT)


class Rows:
    """Counts of the rows a refused request must not write."""

    # Not run_commands: a refused command on a run is recorded in its history, by design.
    TABLES = ("runs", "workflows", "workers", "waits", "published_events", "schedules")

    def __init__(self, database_url: str) -> None:
        self._url = libpq_url(database_url)
        self._conn: psycopg.AsyncConnection[Any] | None = None

    async def counts(self) -> dict[str, int]:
        if self._conn is None:
            self._conn = await psycopg.AsyncConnection.connect(self._url, autocommit=True)
        query = "SELECT " + ", ".join(f"(SELECT count(*) FROM {t})" for t in self.TABLES)
        row = await (await self._conn.execute(query)).fetchone()
        assert row is not None
        return dict(zip(self.TABLES, (int(n) for n in row), strict=True))

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()


async def refused_cleanly(
    rows: Rows,
    call: Callable[[], Awaitable[T]],
    what: object,
    local: tuple[type[Exception], ...] = (),
) -> T | None:
    """Makes the call: its result when it succeeds; when it is refused (by the server, or by a
    client raising one of `local` before sending), checks the status and that nothing was
    written, and returns None."""
    before = await rows.counts()
    try:
        return await call()
    except aio.AioRpcError as error:
        assert_clear(error, what)
    except local:
        pass
    assert await rows.counts() == before, f"a refused call wrote rows: {_short(what)}"
    return None


def every_type() -> workflow_pb2.WorkflowDefinition:
    """A workflow whose trigger takes one optional field of each type: hostile payloads that
    fit the contract are accepted and stored."""
    d = definition("bags")
    types = ["string", "integer", "number", "boolean", "object", "list", "timestamp"]
    del d.triggers[0].payload[:]
    for name in types:
        d.triggers[0].payload.add(
            name=name, type=getattr(workflow_pb2, f"FIELD_TYPE_{name.upper()}")
        )
    return d


async def register(channel: aio.Channel, *definitions: workflow_pb2.WorkflowDefinition) -> None:
    for d in definitions:
        await call(
            channel,
            WORKFLOW_METHODS["RegisterWorkflow"],
            workflow_service_pb2.RegisterWorkflowRequest(definition=d),
        )


async def assert_still_serves(channel: aio.Channel, database_url: str) -> None:
    """After the examples: the health service says SERVING, and a fresh workflow's run
    completes over the attempt stream."""
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", *SERVICE_NAMES):
        answer = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING, service
    await WorkflowServiceStub(channel).RegisterWorkflow(
        workflow_service_pb2.RegisterWorkflowRequest(definition=definition("after-fuzz")),
        timeout=CALL_TIMEOUT,
    )
    runs = RunServiceStub(channel)
    run = (
        await runs.StartRun(
            run_service_pb2.StartRunRequest(workflow="after-fuzz", payload=payload(amount=1)),
            timeout=CALL_TIMEOUT,
        )
    ).run
    protocol = Protocol(channel, "after")
    for step in ("reserve", "ship"):
        attempt_id, token = await scheduled_attempt(database_url, run.id, step)
        claimed = await asyncio.wait_for(
            protocol.send(
                started=wpb.AttemptStarted(attempt_id=attempt_id, token=token, worker_id="after")
            ),
            CALL_TIMEOUT,
        )
        assert claimed.start.accepted, claimed
        done = await asyncio.wait_for(
            protocol.send(completed=wpb.AttemptCompleted(attempt_id=attempt_id, token=token)),
            CALL_TIMEOUT,
        )
        assert done.result.accepted, done
    protocol.call.cancel()
    final = await runs.GetRun(run_service_pb2.GetRunRequest(run_id=run.id), timeout=CALL_TIMEOUT)
    assert final.run.status == run_pb2.RUN_STATUS_COMPLETED
