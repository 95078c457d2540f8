"""The attempt stream's multiplexing, reconnect, resend and pushed cancellations, against an
in-memory fake call (the real stream is exercised against the server in the integration
tests), and its metadata over real gRPC against a fake servicer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import grpc
import pytest
from google.protobuf import struct_pb2
from squidmesh.v1 import worker_service_pb2 as pb
from squidmesh.v1 import worker_service_pb2_grpc as pb_grpc

from worker_sdk.attempt_stream import (
    MAX_BATCH_BYTES,
    AttemptStream,
    AttemptStreamClosedError,
    in_batches,
)

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]


class FakeCall:
    def __init__(self) -> None:
        self.written: list[pb.StreamAttemptsRequest] = []
        self.wrote = asyncio.Event()
        self._responses: asyncio.Queue[pb.StreamAttemptsResponse | Exception] = asyncio.Queue()
        self.cancelled = False

    async def write(self, request: pb.StreamAttemptsRequest) -> None:
        self.written.append(request)
        self.wrote.set()

    async def read(self) -> object:
        item = await self._responses.get()
        if isinstance(item, Exception):
            raise item
        return item

    def cancel(self) -> bool:
        self.cancelled = True
        self._responses.put_nowait(RuntimeError("cancelled"))
        return True

    def answer(self, request_id: int, accepted: bool = True) -> None:
        self._responses.put_nowait(
            pb.StreamAttemptsResponse(
                request_id=request_id, start=pb.StartDecision(accepted=accepted, run_id="r")
            )
        )

    def answer_result(self, request_id: int) -> None:
        self._responses.put_nowait(
            pb.StreamAttemptsResponse(request_id=request_id, result=pb.ResultAck(accepted=True))
        )

    def push_cancel(self, attempt_ids: list[str], reason: str) -> None:
        """What the server sends on its own: request_id 0."""
        self._responses.put_nowait(
            pb.StreamAttemptsResponse(
                cancel=pb.CancelAttempts(attempt_ids=attempt_ids, reason=reason)
            )
        )

    def answer_together(self, responses: list[pb.StreamAttemptsResponse]) -> None:
        """Answers sent as one message (`batch`)."""
        self._responses.put_nowait(pb.StreamAttemptsResponse(batch=responses))

    def break_(self) -> None:
        self._responses.put_nowait(ConnectionResetError("server restarted"))

    async def wait_written(self, count: int) -> None:
        while len(self.written) < count:
            self.wrote.clear()
            await asyncio.wait_for(self.wrote.wait(), 5)


class FakeServer:
    def __init__(self) -> None:
        self.calls: list[FakeCall] = []
        self.opened = asyncio.Event()

    def open(self) -> FakeCall:
        call = FakeCall()
        self.calls.append(call)
        self.opened.set()
        return call

    async def next_call(self, count: int) -> FakeCall:
        while len(self.calls) < count:
            self.opened.clear()
            await asyncio.wait_for(self.opened.wait(), 5)
        return self.calls[count - 1]


def started(attempt: str) -> pb.AttemptStarted:
    return pb.AttemptStarted(attempt_id=attempt, token="t", worker_id="w")


async def test_requests_are_multiplexed_by_request_id() -> None:
    server = FakeServer()
    stream = AttemptStream(server.open, min_backoff=0.01)
    stream.start()
    try:
        first = asyncio.create_task(stream.started(started("a1")))
        second = asyncio.create_task(stream.started(started("a2")))
        call = await server.next_call(1)
        await call.wait_written(2)
        ids = {r.started.attempt_id: r.request_id for r in call.written}
        assert len(set(ids.values())) == 2
        call.answer(ids["a2"], accepted=False)  # answered out of order
        call.answer(ids["a1"], accepted=True)
        assert (await first).accepted and not (await second).accepted
        assert stream.unanswered == 0
    finally:
        await stream.close()


async def test_requests_ready_together_are_written_as_one_batch() -> None:
    server = FakeServer()
    recorder = CancelRecorder()
    stream = AttemptStream(server.open, min_backoff=0.01, batches=True, on_cancel=recorder)
    stream.start()
    try:
        call = await server.next_call(1)
        requests = [asyncio.create_task(stream.started(started(f"a{i}"))) for i in range(3)]
        await call.wait_written(1)
        assert len(call.written) == 1
        batch = call.written[0].batch
        assert [r.started.attempt_id for r in batch] == ["a0", "a1", "a2"]
        assert call.written[0].request_id == 0 and not call.written[0].HasField("started")
        # Answers come batched too, in any order, with a pushed cancel among them.
        call.answer_together(
            [
                pb.StreamAttemptsResponse(
                    request_id=batch[2].request_id, start=pb.StartDecision(accepted=False)
                ),
                pb.StreamAttemptsResponse(
                    cancel=pb.CancelAttempts(attempt_ids=["x"], reason="run cancelled")
                ),
                pb.StreamAttemptsResponse(
                    request_id=batch[0].request_id, start=pb.StartDecision(accepted=True)
                ),
                pb.StreamAttemptsResponse(
                    request_id=batch[1].request_id, start=pb.StartDecision(accepted=True)
                ),
            ]
        )
        assert [(await r).accepted for r in requests] == [True, True, False]
        assert await recorder.wait() == [(["x"], "run cancelled")]
        assert stream.unanswered == 0
    finally:
        await stream.close()


def test_batches_stay_under_the_size_limit_in_order() -> None:
    def completed(i: int, size: int) -> pb.StreamAttemptsRequest:
        output = struct_pb2.Value(string_value="x" * size)
        return pb.StreamAttemptsRequest(
            request_id=i, completed=pb.AttemptCompleted(attempt_id=f"a{i}", output=output)
        )

    third = MAX_BATCH_BYTES // 3
    messages = [completed(1, third), completed(2, third), completed(3, third)]
    messages += [completed(4, 2 * MAX_BATCH_BYTES), completed(5, 10), completed(6, 10)]
    batches = list(in_batches(messages))
    assert [[m.request_id for m in b] for b in batches] == [[1, 2], [3], [4], [5, 6]]
    assert all(sum(m.ByteSize() for m in b) <= MAX_BATCH_BYTES for b in batches if len(b) > 1)


async def test_large_requests_ready_together_are_split_across_messages() -> None:
    server = FakeServer()
    stream = AttemptStream(server.open, min_backoff=0.01, batches=True)
    stream.start()
    try:
        call = await server.next_call(1)
        big = struct_pb2.Value(string_value="x" * (MAX_BATCH_BYTES // 2))
        requests = [
            asyncio.create_task(
                stream.completed(pb.AttemptCompleted(attempt_id=f"a{i}", token="t", output=big))
            )
            for i in range(3)
        ]
        await call.wait_written(3)
        assert not any(m.batch for m in call.written)  # one each: two would not fit
        assert [m.completed.attempt_id for m in call.written] == ["a0", "a1", "a2"]
        for m in call.written:
            call.answer_result(m.request_id)
        assert [(await r).accepted for r in requests] == [True, True, True]
    finally:
        await stream.close()


async def test_without_the_servers_word_requests_are_written_one_by_one() -> None:
    server = FakeServer()
    stream = AttemptStream(server.open, min_backoff=0.01)
    stream.start()
    try:
        call = await server.next_call(1)
        requests = [asyncio.create_task(stream.started(started(f"a{i}"))) for i in range(3)]
        await call.wait_written(3)
        assert [r.started.attempt_id for r in call.written] == ["a0", "a1", "a2"]
        assert not any(r.batch for r in call.written)
        for r in call.written:
            call.answer(r.request_id)
        assert [(await r).accepted for r in requests] == [True, True, True]
    finally:
        await stream.close()


async def test_unanswered_requests_are_resent_after_a_reconnect() -> None:
    server = FakeServer()
    stream = AttemptStream(server.open, min_backoff=0.01)
    stream.start()
    try:
        answered = asyncio.create_task(stream.started(started("done")))
        pending = asyncio.create_task(stream.started(started("a1")))
        first = await server.next_call(1)
        await first.wait_written(2)
        first.answer(first.written[0].request_id)
        await answered
        first.break_()  # the server restarts before answering a1
        second = await server.next_call(2)
        await second.wait_written(1)
        assert [r.started.attempt_id for r in second.written] == ["a1"]  # only the unanswered
        assert second.written[0].request_id == first.written[1].request_id
        second.answer(second.written[0].request_id)
        assert (await pending).accepted
        assert first.cancelled and stream.connections == 2
    finally:
        await stream.close()


async def test_a_request_unanswered_too_long_triggers_a_reconnect() -> None:
    server = FakeServer()
    stream = AttemptStream(server.open, request_timeout=0.2, min_backoff=0.01)
    stream.start()
    try:
        pending = asyncio.create_task(stream.started(started("a1")))
        first = await server.next_call(1)
        await first.wait_written(1)  # never answered: a half-dead connection
        second = await server.next_call(2)
        await second.wait_written(1)
        assert second.written[0].started.attempt_id == "a1"
        second.answer(second.written[0].request_id)
        assert (await pending).accepted
    finally:
        await stream.close()


async def test_a_duplicate_answer_is_ignored() -> None:
    server = FakeServer()
    stream = AttemptStream(server.open, min_backoff=0.01)
    stream.start()
    try:
        pending = asyncio.create_task(stream.started(started("a1")))
        call = await server.next_call(1)
        await call.wait_written(1)
        call.answer(call.written[0].request_id)
        call.answer(call.written[0].request_id)  # e.g. the answer to a resend
        assert (await pending).accepted
        follow_up = asyncio.create_task(stream.started(started("a2")))
        await call.wait_written(2)
        call.answer(call.written[1].request_id)
        assert (await follow_up).accepted and stream.connections == 1
    finally:
        await stream.close()


async def test_requests_made_while_disconnected_go_out_on_the_next_stream() -> None:
    server = FakeServer()
    stream = AttemptStream(server.open, min_backoff=0.3)
    stream.start()
    try:
        first = await server.next_call(1)
        first.break_()
        # The stream sees the break, then backs off: the request is made at once (no await in
        # between), however slow the machine, so it is made with no live stream.
        await asyncio.wait_for(_disconnected(stream), 5)
        assert not stream.connected
        pending = asyncio.create_task(stream.started(started("a1")))
        second = await server.next_call(2)
        await second.wait_written(1)
        second.answer(second.written[0].request_id)
        assert (await pending).accepted
    finally:
        await stream.close()


async def _disconnected(stream: AttemptStream) -> None:
    while stream.connected:  # noqa: ASYNC110 (the stream has no event for it)
        await asyncio.sleep(0.001)


async def test_close_fails_waiting_requests() -> None:
    server = FakeServer()
    stream = AttemptStream(server.open)
    stream.start()
    pending = asyncio.create_task(stream.started(started("a1")))
    call = await server.next_call(1)
    await call.wait_written(1)
    await stream.close()
    with pytest.raises(AttemptStreamClosedError):
        await pending
    with pytest.raises(AttemptStreamClosedError):
        await stream.started(started("a2"))


class CancelRecorder:
    """An `on_cancel` callback that records what it is given."""

    def __init__(self) -> None:
        self.received: list[tuple[list[str], str]] = []
        self.called = asyncio.Event()

    def __call__(self, attempt_ids: list[str], reason: str) -> None:
        self.received.append((attempt_ids, reason))
        self.called.set()

    async def wait(self) -> list[tuple[list[str], str]]:
        await asyncio.wait_for(self.called.wait(), 5)
        return self.received


async def test_a_pushed_cancel_goes_to_the_callback_not_to_a_request() -> None:
    server = FakeServer()
    stream = AttemptStream(server.open, min_backoff=0.01)
    recorder = CancelRecorder()
    stream.on_cancel = recorder
    stream.start()
    try:
        pending = asyncio.create_task(stream.started(started("a1")))
        call = await server.next_call(1)
        await call.wait_written(1)
        call.push_cancel(["a1", "a2"], "run cancelled")
        assert await recorder.wait() == [(["a1", "a2"], "run cancelled")]
        assert not pending.done() and stream.unanswered == 1  # not taken for an answer
        call.answer(call.written[0].request_id)
        assert (await pending).accepted and stream.connections == 1
    finally:
        await stream.close()


async def test_a_failing_cancel_callback_does_not_break_the_stream() -> None:
    server = FakeServer()
    calls: list[str] = []

    def on_cancel(ids: list[str], reason: str) -> None:
        calls.append(reason)
        raise RuntimeError("bug in the callback")

    stream = AttemptStream(server.open, min_backoff=0.01, on_cancel=on_cancel)
    stream.start()
    try:
        pending = asyncio.create_task(stream.started(started("a1")))
        call = await server.next_call(1)
        await call.wait_written(1)
        call.push_cancel(["a1"], "timed out")
        call.answer(call.written[0].request_id)
        assert (await asyncio.wait_for(pending, 5)).accepted
        assert calls == ["timed out"] and stream.connections == 1
    finally:
        await stream.close()


class PushingServicer(pb_grpc.WorkerServiceServicer):
    """Records the stream's metadata, pushes one cancel, then answers each request."""

    def __init__(self) -> None:
        self.metadata: dict[str, str | bytes] = {}

    async def RegisterWorker(  # noqa: N802 (the generated name)
        self, request: pb.RegisterWorkerRequest, context: Context
    ) -> pb.RegisterWorkerResponse:
        raise NotImplementedError

    async def ListWorkers(  # noqa: N802 (the generated name)
        self, request: pb.ListWorkersRequest, context: Context
    ) -> pb.ListWorkersResponse:
        raise NotImplementedError

    async def StreamAttempts(  # noqa: N802 (the generated name)
        self,
        request_iterator: AsyncIterator[pb.StreamAttemptsRequest],
        context: Context,
    ) -> AsyncIterator[pb.StreamAttemptsResponse]:
        self.metadata = dict(context.invocation_metadata() or ())
        yield pb.StreamAttemptsResponse(
            cancel=pb.CancelAttempts(attempt_ids=["a0"], reason="lease lost")
        )
        async for request in request_iterator:
            yield pb.StreamAttemptsResponse(
                request_id=request.request_id, start=pb.StartDecision(accepted=True)
            )


async def test_over_grpc_the_stream_carries_the_worker_id_and_receives_pushes() -> None:
    servicer = PushingServicer()
    server = grpc.aio.server()
    pb_grpc.add_WorkerServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    recorder = CancelRecorder()
    stream = AttemptStream.for_channel(
        channel,
        worker_id="w-1",
        metadata=[("authorization", "Bearer t")],
        on_cancel=recorder,
    )
    stream.start()
    try:
        assert (await asyncio.wait_for(stream.started(started("a1")), 5)).accepted
        assert await recorder.wait() == [(["a0"], "lease lost")]
        assert servicer.metadata["squidmesh-worker-id"] == "w-1"
        assert servicer.metadata["squidmesh-accepts-batches"] == "1"
        assert servicer.metadata["authorization"] == "Bearer t"
    finally:
        await stream.close()
        await channel.close()
        await server.stop(None)
