"""The attempt stream's multiplexing, reconnect and resend, against an in-memory fake call
(the real stream is exercised against the server in the integration tests)."""

from __future__ import annotations

import asyncio

import pytest
from squidmesh.v1 import worker_service_pb2 as pb

from worker_sdk.attempt_stream import AttemptStream, AttemptStreamClosedError


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
        await asyncio.sleep(0.05)  # in the backoff: no live stream
        assert not stream.connected
        pending = asyncio.create_task(stream.started(started("a1")))
        second = await server.next_call(2)
        await second.wait_written(1)
        second.answer(second.written[0].request_id)
        assert (await pending).accepted
    finally:
        await stream.close()


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
