"""The worker's side of `WorkerService.StreamAttempts`: request/response multiplexing over one
bidirectional stream that survives server restarts.

State model
-----------
- `_pending`: every request not yet answered, by `request_id` (a counter). A request enters it
  when `request()` is called and leaves it when its answer arrives (or its caller gives up).
- `_connection`: the live stream, or None between two streams. A connection is opened with
  every pending request queued on it (oldest first), and each new request is queued on the
  live connection, if any. So every unanswered request is written once on every connection
  until answered — "resend on reconnect" — and the server treats repeated started, completed,
  failed and heartbeat messages for the same attempt and token idempotently.
- A connection ends when the stream breaks or ends (server restart: UNAVAILABLE...), or when a
  request stayed unanswered on it for `request_timeout` (a half-dead connection). The run loop
  then opens the next one after a backoff (0.1 s doubling to 2 s, reset once a connection
  worked), forever, until `close()`.

Requests ready at once on a connection are written as one message (`batch`) when the server
said at registration that it reads them (`batches`); the stream always accepts batched answers.
A stream message costs far more than its bytes, so under load this is most of the stream's
cost saved.

Answers that match no pending request (the second answer to a resent request) are dropped.
The server also pushes `cancel` messages on its own (request_id 0, answering nothing): they go
to the `on_cancel` callback and never touch `_pending`. It pushes them to the stream opened
with the worker id in the "squidmesh-worker-id" metadata (`for_channel` sends it); one lost
with a broken connection is still learnt from the next heartbeat's answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import grpc
import structlog
from squidmesh.v1 import worker_service_pb2 as pb
from squidmesh.v1 import worker_service_pb2_grpc as pb_grpc

__all__ = [
    "BATCHES_METADATA",
    "WORKER_ID_METADATA",
    "AttemptStream",
    "AttemptStreamClosedError",
    "StreamCall",
    "in_batches",
]

log = structlog.get_logger("squidmesh.worker.stream")

WORKER_ID_METADATA = "squidmesh-worker-id"
"""The metadata key under which the server registers a stream to push cancellations to."""
BATCHES_METADATA = "squidmesh-accepts-batches"
"""Set to "1": tells the server it may send several answers as one message."""
MAX_BATCH = 256
"""Messages taken from the queue at once at most (by either side)."""
MAX_BATCH_BYTES = 1 << 20
"""A batch's size at most (a larger message goes alone): well under gRPC's default limit of
4 MiB per received message, whatever the payloads."""


M = TypeVar("M", pb.StreamAttemptsRequest, pb.StreamAttemptsResponse)


def in_batches(messages: list[M]) -> Iterator[list[M]]:
    """`messages`, in order, in runs of at most MAX_BATCH_BYTES (a larger one alone): what
    each stream message carries when several are ready at once."""
    batch: list[M] = []
    size = 0
    for message in messages:
        n = message.ByteSize()
        if batch and size + n > MAX_BATCH_BYTES:
            yield batch
            batch, size = [], 0
        batch.append(message)
        size += n
    if batch:
        yield batch


class AttemptStreamClosedError(Exception):
    """The stream was closed while a request was waiting for its answer."""


class StreamCall(Protocol):
    """The part of `grpc.aio.StreamStreamCall` the stream uses."""

    async def write(self, request: pb.StreamAttemptsRequest) -> None: ...

    async def read(self) -> object: ...

    def cancel(self) -> bool: ...


@dataclass(eq=False)
class _Pending:
    request: pb.StreamAttemptsRequest
    future: asyncio.Future[pb.StreamAttemptsResponse]
    sent_at: float | None = None
    """When it was queued on the live connection (monotonic); None while there is none."""


@dataclass(eq=False)
class _Connection:
    call: StreamCall
    outbox: asyncio.Queue[pb.StreamAttemptsRequest] = field(default_factory=asyncio.Queue)
    answered: bool = False


class AttemptStream:
    """Multiplexed, reconnecting attempt stream. Use `start()`, the typed request methods,
    then `close()`.

    `on_cancel(attempt_ids, reason)` is called on the event loop for each `CancelAttempts`
    the server pushes; it may be set after construction.
    """

    def __init__(
        self,
        open_call: Callable[[], StreamCall],
        *,
        request_timeout: float = 10.0,
        min_backoff: float = 0.1,
        max_backoff: float = 2.0,
        worker_id: str = "",
        on_cancel: Callable[[list[str], str], object] | None = None,
        batches: bool = False,
    ) -> None:
        self._open_call = open_call
        self._batches = batches
        self.on_cancel = on_cancel
        self._request_timeout = request_timeout
        self._min_backoff = min_backoff
        self._max_backoff = max_backoff
        self._log = log.bind(worker_id=worker_id) if worker_id else log
        self._pending: dict[int, _Pending] = {}
        self._connection: _Connection | None = None
        self._next_id = 0
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self.connections = 0
        """How many streams were opened so far (1 + reconnects)."""

    @classmethod
    def for_channel(
        cls,
        channel: grpc.aio.Channel,
        *,
        worker_id: str,
        metadata: Sequence[tuple[str, str]] = (),
        **options: Any,
    ) -> AttemptStream:
        """A stream on `channel` that identifies itself as `worker_id`, so the server can push
        this worker's cancellations on it; `metadata` is sent too (e.g. authorization). Pass
        `batches` if the server reads batched requests (RegisterWorkerResponse)."""
        stub = pb_grpc.WorkerServiceStub(channel)
        call_metadata = ((WORKER_ID_METADATA, worker_id), (BATCHES_METADATA, "1"), *metadata)
        return cls(
            lambda: stub.StreamAttempts(metadata=call_metadata), worker_id=worker_id, **options
        )

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="squidmesh-attempt-stream")

    async def close(self) -> None:
        """Ends the stream; requests still waiting fail with AttemptStreamClosedError."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(AttemptStreamClosedError("attempt stream closed"))
        self._pending.clear()

    @property
    def connected(self) -> bool:
        return self._connection is not None

    @property
    def unanswered(self) -> int:
        return len(self._pending)

    # -- typed requests ------------------------------------------------------------------

    async def started(self, message: pb.AttemptStarted) -> pb.StartDecision:
        response = await self.request(pb.StreamAttemptsRequest(started=message))
        return _expect(response, "start").start

    async def declined(self, message: pb.AttemptDeclined) -> pb.StartDecision:
        response = await self.request(pb.StreamAttemptsRequest(declined=message))
        return _expect(response, "start").start

    async def heartbeat(self, message: pb.WorkerHeartbeat) -> pb.HeartbeatAck:
        response = await self.request(pb.StreamAttemptsRequest(heartbeat=message))
        return _expect(response, "heartbeat").heartbeat

    async def completed(self, message: pb.AttemptCompleted) -> pb.ResultAck:
        response = await self.request(pb.StreamAttemptsRequest(completed=message))
        return _expect(response, "result").result

    async def failed(self, message: pb.AttemptFailed) -> pb.ResultAck:
        response = await self.request(pb.StreamAttemptsRequest(failed=message))
        return _expect(response, "result").result

    async def request(self, request: pb.StreamAttemptsRequest) -> pb.StreamAttemptsResponse:
        """Sends `request` (its request_id is assigned here) and waits for its answer, across
        reconnects, for as long as it takes."""
        if self._closed:
            raise AttemptStreamClosedError("attempt stream closed")
        self._next_id += 1
        request_id = self._next_id
        request.request_id = request_id
        pending = _Pending(request, asyncio.get_running_loop().create_future())
        self._pending[request_id] = pending
        if self._connection is not None:
            pending.sent_at = time.monotonic()
            self._connection.outbox.put_nowait(request)
        try:
            return await pending.future
        finally:
            self._pending.pop(request_id, None)

    # -- connection loop -----------------------------------------------------------------

    async def _run(self) -> None:
        backoff = self._min_backoff
        while not self._closed:
            opened = time.monotonic()
            try:
                answered = await self._serve_connection()
            except Exception:  # opening the call itself failed
                self._log.exception("attempt_stream_open_failed")
                answered = False
            if answered or time.monotonic() - opened > 5.0:
                backoff = self._min_backoff
            self._log.info(
                "attempt_stream_reconnecting", delay=backoff, unanswered=len(self._pending)
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._max_backoff)

    async def _serve_connection(self) -> bool:
        """One stream, from open to break. Returns whether it answered anything."""
        connection = _Connection(self._open_call())
        self.connections += 1
        now = time.monotonic()
        for request_id in sorted(self._pending):  # resend what is unanswered, oldest first
            pending = self._pending[request_id]
            pending.sent_at = now
            connection.outbox.put_nowait(pending.request)
        self._connection = connection
        tasks = [
            asyncio.create_task(self._write(connection)),
            asyncio.create_task(self._read(connection)),
            asyncio.create_task(self._watch(connection)),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                error = None if task.cancelled() else task.exception()
                if isinstance(error, grpc.aio.AioRpcError):
                    self._log.warning(
                        "attempt_stream_broken", code=error.code().name, details=error.details()
                    )
                elif error is not None:
                    self._log.warning("attempt_stream_broken", error=repr(error))
        finally:
            self._connection = None
            for pending in self._pending.values():
                pending.sent_at = None
            for task in tasks:
                task.cancel()
            connection.call.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return connection.answered

    async def _write(self, connection: _Connection) -> None:
        outbox = connection.outbox
        while True:
            request = await outbox.get()
            if not self._batches or outbox.empty():
                await connection.call.write(request)
                continue
            ready = [request]
            while len(ready) < MAX_BATCH and not outbox.empty():
                ready.append(outbox.get_nowait())
            for batch in in_batches(ready):
                await connection.call.write(
                    batch[0] if len(batch) == 1 else pb.StreamAttemptsRequest(batch=batch)
                )

    async def _read(self, connection: _Connection) -> None:
        while True:
            message = await connection.call.read()
            if not isinstance(message, pb.StreamAttemptsResponse):  # grpc.aio.EOF
                self._log.info("attempt_stream_ended_by_server")
                return
            connection.answered = True
            for response in message.batch or (message,):
                self._dispatch(response)

    def _dispatch(self, response: pb.StreamAttemptsResponse) -> None:
        if response.WhichOneof("message") == "cancel":
            self._dispatch_cancel(response.cancel)
            return
        pending = self._pending.pop(response.request_id, None)
        if pending is not None and not pending.future.done():
            pending.future.set_result(response)

    def _dispatch_cancel(self, cancel: pb.CancelAttempts) -> None:
        attempt_ids = list(cancel.attempt_ids)
        self._log.debug("attempt_stream_cancel", attempts=attempt_ids, reason=cancel.reason)
        if self.on_cancel is None:
            return
        try:
            self.on_cancel(attempt_ids, cancel.reason)
        except Exception:  # a callback bug must not break the stream every request uses
            self._log.exception("attempt_stream_cancel_callback_failed")

    async def _watch(self, connection: _Connection) -> None:
        """Returns (ending the connection) once a request went unanswered too long on it."""
        while True:
            await asyncio.sleep(min(1.0, self._request_timeout / 4))
            sent = [p.sent_at for p in self._pending.values() if p.sent_at is not None]
            if sent and time.monotonic() - min(sent) > self._request_timeout:
                self._log.warning(
                    "attempt_stream_request_timeout",
                    timeout=self._request_timeout,
                    unanswered=len(sent),
                )
                return


def _expect(response: pb.StreamAttemptsResponse, kind: str) -> pb.StreamAttemptsResponse:
    if response.WhichOneof("message") == "rejected" and kind in ("start", "result"):
        # The server could not read the request (its bytes did not decode): a refusal like
        # any other, so that the claim or result is dropped, never sent again.
        reason = f"rejected: {response.rejected.message}"
        if kind == "start":
            return pb.StreamAttemptsResponse(
                start=pb.StartDecision(accepted=False, refusal_reason=reason)
            )
        return pb.StreamAttemptsResponse(result=pb.ResultAck(accepted=False, refusal_reason=reason))
    if response.WhichOneof("message") != kind:
        raise RuntimeError(
            f"attempt stream protocol error: request {response.request_id} answered with "
            f"{response.WhichOneof('message')!r}, expected {kind!r}"
        )
    return response
