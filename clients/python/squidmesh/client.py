"""Typed clients of the workflow and run APIs: `Client` (blocking) and `AsyncClient`
(asyncio). Both build their requests with the same functions (`_build`), which check their
arguments before any call (TypeError/ValueError); errors of the calls are the gRPC errors
(`grpc.RpcError`, whose `.code()` tells NOT_FOUND, INVALID_ARGUMENT...).

    with Client("127.0.0.1:50051") as client:
        run = client.start_run("payment", {"amount": 12.5})
        final = client.wait_for_run(run.id, timeout=30)
        print(run_status_name(final.status), struct_to_dict(final.context))
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterator,
    Mapping,
    Sequence,
)
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Protocol, TypeVar

import grpc
from google.protobuf import timestamp_pb2

from squidmesh import DEFAULT_ADDRESS
from squidmesh.v1 import (
    run_pb2,
    run_service_pb2,
    run_service_pb2_grpc,
    workflow_pb2,
    workflow_service_pb2,
    workflow_service_pb2_grpc,
)
from squidmesh.values import to_struct

__all__ = [
    "TERMINAL_RUN_STATUSES",
    "AsyncClient",
    "Client",
    "RunStatusLike",
    "RunViewLike",
    "WorkflowSource",
    "is_terminal",
    "run_status",
    "run_status_name",
    "run_view",
]

RunStatusLike = str | int
"""A run status: its enum value or its short name ("completed", "running"...)."""

RunViewLike = str | int
"""How much of each run `list_runs` returns: "basic" (the default: no payload, context or
error details), "full", or the `RunView` enum value."""

TERMINAL_RUN_STATUSES = frozenset(
    {run_pb2.RUN_STATUS_COMPLETED, run_pb2.RUN_STATUS_FAILED, run_pb2.RUN_STATUS_CANCELLED}
)
_PREFIX = "RUN_STATUS_"


class WorkflowSource(Protocol):
    """What `register_workflow` takes besides a definition message: anything that builds one,
    such as `worker_sdk.Workflow`."""

    def definition(self) -> workflow_pb2.WorkflowDefinition: ...


def run_status_name(status: int) -> str:
    """RUN_STATUS_COMPLETED -> "completed"."""
    return run_pb2.RunStatus.Name(run_pb2.RunStatus.ValueType(status)).removeprefix(_PREFIX).lower()


def run_status(status: RunStatusLike) -> run_pb2.RunStatus.ValueType:
    """ "completed" (or "RUN_STATUS_COMPLETED", or the number) -> RUN_STATUS_COMPLETED.
    Raises ValueError, listing the valid names, for anything else."""
    return run_pb2.RunStatus.ValueType(_enum_value(run_pb2.RunStatus, _PREFIX, "status", status))


def run_view(view: RunViewLike) -> run_service_pb2.RunView.ValueType:
    """ "basic"/"full" (or "RUN_VIEW_FULL", or the number) -> the `RunView` value."""
    return run_service_pb2.RunView.ValueType(
        _enum_value(run_service_pb2.RunView, "RUN_VIEW_", "view", view)
    )


def _enum_value(enum: Any, prefix: str, what: str, value: str | int) -> int:
    """The number of an enum value given by short name, full name or number (not UNSPECIFIED:
    a filter or a view by that name would mean nothing)."""
    known = {name: int(number) for name, number in enum.items() if number}
    if isinstance(value, str):
        name = value.upper() if value.upper().startswith(prefix) else prefix + value.upper()
        if name in known:
            return known[name]
    elif isinstance(value, int) and not isinstance(value, bool) and value in known.values():
        return value
    names = [name.removeprefix(prefix).lower() for name in known]
    raise ValueError(f"{what} {value!r} is not one of: {', '.join(names)}")


def is_terminal(status: int) -> bool:
    return status in TERMINAL_RUN_STATUSES


def _timestamp(name: str, when: datetime | None) -> timestamp_pb2.Timestamp | None:
    """A datetime as a Timestamp; a naive one is local time, as `datetime.timestamp()` reads it."""
    if when is None:
        return None
    if not isinstance(when, datetime):
        raise TypeError(f"{name} must be a datetime, not {type(when).__name__}")
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(when.astimezone(UTC))
    return stamp


class _build:  # noqa: N801 - a namespace of request builders shared by both clients
    @staticmethod
    def register_workflow(
        workflow: WorkflowSource | workflow_pb2.WorkflowDefinition,
    ) -> workflow_service_pb2.RegisterWorkflowRequest:
        if isinstance(workflow, workflow_pb2.WorkflowDefinition):
            definition = workflow
        elif callable(getattr(workflow, "definition", None)):
            definition = workflow.definition()
        else:
            raise TypeError(
                "register_workflow takes a Workflow or a WorkflowDefinition, "
                f"not {type(workflow).__name__}"
            )
        return workflow_service_pb2.RegisterWorkflowRequest(definition=definition)

    @staticmethod
    def start_run(
        workflow: str, payload: Mapping[str, Any] | None, trigger: str, idempotency_key: str
    ) -> run_service_pb2.StartRunRequest:
        return run_service_pb2.StartRunRequest(
            workflow=workflow,
            trigger=trigger,
            payload=to_struct({} if payload is None else payload, where="payload"),
            idempotency_key=idempotency_key,
        )

    @staticmethod
    def list_runs(
        workflow: str,
        statuses: Sequence[RunStatusLike] | RunStatusLike,
        trigger: str,
        page_size: int,
        page_token: str,
        created_after: datetime | None,
        created_before: datetime | None,
        view: RunViewLike,
    ) -> run_service_pb2.ListRunsRequest:
        if isinstance(statuses, str | int):
            statuses = [statuses]
        return run_service_pb2.ListRunsRequest(
            workflow=workflow,
            statuses=[run_status(s) for s in statuses],
            trigger=trigger,
            page_size=page_size,
            page_token=page_token,
            create_time_after=_timestamp("created_after", created_after),
            create_time_before=_timestamp("created_before", created_before),
            view=run_view(view),
        )

    @staticmethod
    def watch_run(run_id: str, after_sequence: int | None) -> run_service_pb2.WatchRunRequest:
        request = run_service_pb2.WatchRunRequest(run_id=run_id)
        if after_sequence is not None:
            request.after_sequence = after_sequence
        return request

    @staticmethod
    def is_final(response: run_service_pb2.WatchRunResponse) -> bool:
        """Whether a watch message shows the run terminal."""
        kind = response.WhichOneof("message")
        if kind == "snapshot":
            return is_terminal(response.snapshot.status)
        if kind == "event":
            return is_terminal(response.event.run_status)
        return False

    @staticmethod
    def sequence(response: run_service_pb2.WatchRunResponse) -> int | None:
        """The sequence a watch message brings the reader to, if any."""
        kind = response.WhichOneof("message")
        if kind == "snapshot":
            return response.snapshot.last_sequence
        if kind == "event":
            return response.event.sequence
        return None


def _status_code(exc: grpc.RpcError) -> grpc.StatusCode | None:
    return exc.code() if isinstance(exc, grpc.Call) else None


_IDEMPOTENT = {
    "squidmesh.v1.WorkflowService": ("RegisterWorkflow", "GetWorkflow", "ListWorkflows"),
    "squidmesh.v1.RunService": ("GetRun", "ListRuns", "WatchRun", "CancelRun"),
}
CHANNEL_OPTIONS = (
    ("grpc.enable_retries", 1),
    (
        "grpc.service_config",
        json.dumps(
            {
                "methodConfig": [
                    {
                        "name": [
                            {"service": service, "method": method}
                            for service, methods in _IDEMPOTENT.items()
                            for method in methods
                        ],
                        "retryPolicy": {
                            "maxAttempts": 5,
                            "initialBackoff": "0.2s",
                            "maxBackoff": "3s",
                            "backoffMultiplier": 2,
                            "retryableStatusCodes": ["UNAVAILABLE"],
                        },
                    }
                ]
            }
        ),
    ),
)
"""gRPC's own retries, with backoff, of the calls that are safe to repeat when the server or
its database is unavailable for a moment. StartRun and ReplayRun are safe to repeat only with
an idempotency key: the clients retry those themselves (`_keyed`, `_keyed_async`)."""

_KEYED_BACKOFF_S = (0.2, 0.4, 0.8, 1.6)
"""The waits between the attempts of a keyed StartRun or ReplayRun, as in CHANNEL_OPTIONS."""

T = TypeVar("T")


def _retryable(exc: grpc.RpcError, keyed: bool) -> bool:
    return keyed and _status_code(exc) == grpc.StatusCode.UNAVAILABLE


def _keyed(call: Callable[[], T], keyed: bool) -> T:
    """Runs a StartRun or ReplayRun; with an idempotency key (`keyed`), while UNAVAILABLE,
    again after each wait of _KEYED_BACKOFF_S (with jitter): the key makes a repeat safe."""
    for wait_s in _KEYED_BACKOFF_S:
        try:
            return call()
        except grpc.RpcError as exc:
            if not _retryable(exc, keyed):
                raise
        time.sleep(wait_s * random.uniform(0.5, 1.0))
    return call()


async def _keyed_async(call: Callable[[], Awaitable[T]], keyed: bool) -> T:
    """`_keyed` for the AsyncClient."""
    for wait_s in _KEYED_BACKOFF_S:
        try:
            return await call()
        except grpc.RpcError as exc:
            if not _retryable(exc, keyed):
                raise
        await asyncio.sleep(wait_s * random.uniform(0.5, 1.0))
    return await call()


def _metadata(token: str | None) -> tuple[tuple[str, str], ...] | None:
    return (("authorization", f"Bearer {token}"),) if token else None


class Client:
    """Blocking client. `timeout` (seconds) applies to each unary call."""

    def __init__(
        self, address: str = DEFAULT_ADDRESS, *, token: str | None = None, timeout: float = 30.0
    ) -> None:
        self.address = address
        self._channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        self._workflows = workflow_service_pb2_grpc.WorkflowServiceStub(self._channel)
        self._runs = run_service_pb2_grpc.RunServiceStub(self._channel)
        self._metadata = _metadata(token)
        self._timeout = timeout

    # workflows

    def register_workflow(
        self, workflow: WorkflowSource | workflow_pb2.WorkflowDefinition
    ) -> workflow_pb2.Workflow:
        request = _build.register_workflow(workflow)
        return self._workflows.RegisterWorkflow(request, **self._opts()).workflow

    def get_workflow(self, name: str, version: int = 0) -> workflow_pb2.Workflow:
        request = workflow_service_pb2.GetWorkflowRequest(name=name, version=version)
        return self._workflows.GetWorkflow(request, **self._opts()).workflow

    def list_workflows(
        self, page_size: int = 50, page_token: str = ""
    ) -> workflow_service_pb2.ListWorkflowsResponse:
        request = workflow_service_pb2.ListWorkflowsRequest(
            page_size=page_size, page_token=page_token
        )
        return self._workflows.ListWorkflows(request, **self._opts())

    # runs

    def start_run(
        self,
        workflow: str,
        payload: Mapping[str, Any] | None = None,
        *,
        trigger: str = "",
        idempotency_key: str = "",
    ) -> run_pb2.Run:
        request = _build.start_run(workflow, payload, trigger, idempotency_key)
        return _keyed(
            lambda: self._runs.StartRun(request, **self._opts()), bool(idempotency_key)
        ).run

    def get_run(self, run_id: str) -> run_pb2.Run:
        request = run_service_pb2.GetRunRequest(run_id=run_id)
        return self._runs.GetRun(request, **self._opts()).run

    def list_runs(
        self,
        workflow: str = "",
        statuses: Sequence[RunStatusLike] | RunStatusLike = (),
        trigger: str = "",
        page_size: int = 50,
        page_token: str = "",
        *,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        view: RunViewLike = "basic",
    ) -> run_service_pb2.ListRunsResponse:
        """One page of runs, newest first. `created_after` (inclusive) and `created_before`
        bound the creation time; the "basic" view omits payloads, contexts and error details,
        "full" includes them."""
        request = _build.list_runs(
            workflow,
            statuses,
            trigger,
            page_size,
            page_token,
            created_after,
            created_before,
            view,
        )
        return self._runs.ListRuns(request, **self._opts())

    def iter_runs(
        self,
        workflow: str = "",
        statuses: Sequence[RunStatusLike] | RunStatusLike = (),
        trigger: str = "",
        page_size: int = 50,
        *,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        view: RunViewLike = "basic",
    ) -> Iterator[run_pb2.Run]:
        """Every matching run, newest first, following the page tokens."""
        token = ""
        while True:
            page = self.list_runs(
                workflow,
                statuses,
                trigger,
                page_size,
                token,
                created_after=created_after,
                created_before=created_before,
                view=view,
            )
            yield from page.runs
            token = page.next_page_token
            if not token:
                return

    def watch_run(
        self, run_id: str, after_sequence: int | None = None, *, timeout: float | None = None
    ) -> Generator[run_service_pb2.WatchRunResponse, None, None]:
        """The run's snapshot, then its events until it is terminal (see WatchRun). Close the
        generator to stop watching early."""
        call = self._runs.WatchRun(
            _build.watch_run(run_id, after_sequence), metadata=self._metadata, timeout=timeout
        )
        try:
            yield from call
        finally:
            call.cancel()

    def cancel_run(
        self, run_id: str, actor: str = "", reason: str = "", idempotency_key: str = ""
    ) -> run_pb2.Run:
        request = run_service_pb2.CancelRunRequest(
            run_id=run_id, actor=actor, reason=reason, idempotency_key=idempotency_key
        )
        return self._runs.CancelRun(request, **self._opts()).run

    def replay_run(
        self, run_id: str, allow_irreversible: bool = False, idempotency_key: str = ""
    ) -> run_pb2.Run:
        request = run_service_pb2.ReplayRunRequest(
            run_id=run_id, allow_irreversible=allow_irreversible, idempotency_key=idempotency_key
        )
        return _keyed(
            lambda: self._runs.ReplayRun(request, **self._opts()), bool(idempotency_key)
        ).run

    def wait_for_run(self, run_id: str, timeout: float | None = None) -> run_pb2.Run:
        """Waits (watching) until the run is terminal and returns it. Raises TimeoutError.
        A watch broken by a server restart is resumed where it stopped."""
        deadline = None if timeout is None else time.monotonic() + timeout
        after: int | None = None
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"run {run_id} is not terminal after {timeout} s")
            try:
                for response in self.watch_run(run_id, after, timeout=remaining):
                    after = _build.sequence(response) or after
                    if _build.is_final(response):
                        return self.get_run(run_id)
                run = self.get_run(run_id)  # the stream ended: terminal already?
                if is_terminal(run.status):
                    return run
            except grpc.RpcError as exc:
                code = _status_code(exc)
                if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise TimeoutError(f"run {run_id} is not terminal after {timeout} s") from exc
                if code != grpc.StatusCode.UNAVAILABLE:
                    raise
            time.sleep(0.2)

    # lifecycle

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _opts(self) -> dict[str, Any]:
        return {"metadata": self._metadata, "timeout": self._timeout}


class AsyncClient:
    """asyncio client with the same methods as `Client` (awaitable, async iterators)."""

    def __init__(
        self, address: str = DEFAULT_ADDRESS, *, token: str | None = None, timeout: float = 30.0
    ) -> None:
        self.address = address
        self._channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        self._workflows = workflow_service_pb2_grpc.WorkflowServiceStub(self._channel)
        self._runs = run_service_pb2_grpc.RunServiceStub(self._channel)
        self._metadata = _metadata(token)
        self._timeout = timeout

    # workflows

    async def register_workflow(
        self, workflow: WorkflowSource | workflow_pb2.WorkflowDefinition
    ) -> workflow_pb2.Workflow:
        request = _build.register_workflow(workflow)
        return (await self._workflows.RegisterWorkflow(request, **self._opts())).workflow

    async def get_workflow(self, name: str, version: int = 0) -> workflow_pb2.Workflow:
        request = workflow_service_pb2.GetWorkflowRequest(name=name, version=version)
        return (await self._workflows.GetWorkflow(request, **self._opts())).workflow

    async def list_workflows(
        self, page_size: int = 50, page_token: str = ""
    ) -> workflow_service_pb2.ListWorkflowsResponse:
        request = workflow_service_pb2.ListWorkflowsRequest(
            page_size=page_size, page_token=page_token
        )
        return await self._workflows.ListWorkflows(request, **self._opts())

    # runs

    async def start_run(
        self,
        workflow: str,
        payload: Mapping[str, Any] | None = None,
        *,
        trigger: str = "",
        idempotency_key: str = "",
    ) -> run_pb2.Run:
        request = _build.start_run(workflow, payload, trigger, idempotency_key)
        response = await _keyed_async(
            lambda: self._runs.StartRun(request, **self._opts()), bool(idempotency_key)
        )
        return response.run

    async def get_run(self, run_id: str) -> run_pb2.Run:
        request = run_service_pb2.GetRunRequest(run_id=run_id)
        return (await self._runs.GetRun(request, **self._opts())).run

    async def list_runs(
        self,
        workflow: str = "",
        statuses: Sequence[RunStatusLike] | RunStatusLike = (),
        trigger: str = "",
        page_size: int = 50,
        page_token: str = "",
        *,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        view: RunViewLike = "basic",
    ) -> run_service_pb2.ListRunsResponse:
        """One page of runs, newest first. `created_after` (inclusive) and `created_before`
        bound the creation time; the "basic" view omits payloads, contexts and error details,
        "full" includes them."""
        request = _build.list_runs(
            workflow,
            statuses,
            trigger,
            page_size,
            page_token,
            created_after,
            created_before,
            view,
        )
        return await self._runs.ListRuns(request, **self._opts())

    async def iter_runs(
        self,
        workflow: str = "",
        statuses: Sequence[RunStatusLike] | RunStatusLike = (),
        trigger: str = "",
        page_size: int = 50,
        *,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        view: RunViewLike = "basic",
    ) -> AsyncIterator[run_pb2.Run]:
        """Every matching run, newest first, following the page tokens."""
        token = ""
        while True:
            page = await self.list_runs(
                workflow,
                statuses,
                trigger,
                page_size,
                token,
                created_after=created_after,
                created_before=created_before,
                view=view,
            )
            for run in page.runs:
                yield run
            token = page.next_page_token
            if not token:
                return

    async def watch_run(
        self, run_id: str, after_sequence: int | None = None
    ) -> AsyncIterator[run_service_pb2.WatchRunResponse]:
        """The run's snapshot, then its events until it is terminal (see WatchRun)."""
        call = self._runs.WatchRun(
            _build.watch_run(run_id, after_sequence), metadata=self._metadata
        )
        try:
            async for response in call:
                yield response
        finally:
            call.cancel()

    async def cancel_run(
        self, run_id: str, actor: str = "", reason: str = "", idempotency_key: str = ""
    ) -> run_pb2.Run:
        request = run_service_pb2.CancelRunRequest(
            run_id=run_id, actor=actor, reason=reason, idempotency_key=idempotency_key
        )
        return (await self._runs.CancelRun(request, **self._opts())).run

    async def replay_run(
        self, run_id: str, allow_irreversible: bool = False, idempotency_key: str = ""
    ) -> run_pb2.Run:
        request = run_service_pb2.ReplayRunRequest(
            run_id=run_id, allow_irreversible=allow_irreversible, idempotency_key=idempotency_key
        )
        response = await _keyed_async(
            lambda: self._runs.ReplayRun(request, **self._opts()), bool(idempotency_key)
        )
        return response.run

    async def wait_for_run(
        self,
        run_id: str,
        timeout: float | None = None,  # noqa: ASYNC109 - the signature of Client.wait_for_run
    ) -> run_pb2.Run:
        """Waits (watching) until the run is terminal and returns it. Raises TimeoutError.
        A watch broken by a server restart is resumed where it stopped."""
        async with asyncio.timeout(timeout):
            after: int | None = None
            while True:
                try:
                    async for response in self.watch_run(run_id, after):
                        after = _build.sequence(response) or after
                        if _build.is_final(response):
                            return await self.get_run(run_id)
                    run = await self.get_run(run_id)  # the stream ended: terminal already?
                    if is_terminal(run.status):
                        return run
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.UNAVAILABLE:
                        raise
                await asyncio.sleep(0.2)

    # lifecycle

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _opts(self) -> dict[str, Any]:
        return {"metadata": self._metadata, "timeout": self._timeout}
