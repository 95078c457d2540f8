"""Fuzzing WorkerService: RegisterWorker, and the attempt stream with hostile started,
declined, heartbeat (with progress), completed (with outputs) and failed (with errors)
requests, empty ones, nested batches and undecodable bytes, against live attempts. Every
request is answered (none left to time out), the stream stays open, nothing writes runs,
workflows or workers, and a recorded result can still be read. Through the SDK's attempt
stream, every request is answered on the first connection: nothing is ever sent again."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Iterator
from typing import Any

from google.protobuf import struct_pb2
from google.protobuf.message import DecodeError, Message
from grpc import aio
from hypothesis import strategies as st
from squidmesh.v1 import run_service_pb2
from squidmesh.v1 import worker_service_pb2 as wpb

from tests.integration.fuzz import hostile
from tests.integration.fuzz.harness import (
    CALL_TIMEOUT,
    RUN_METHODS,
    Rows,
    assert_still_serves,
    call,
    fuzz,
    identity,
    refused_cleanly,
)
from tests.integration.test_api import register_orders, start_orders
from worker_sdk.attempt_stream import BATCHES_METADATA, WORKER_ID_METADATA, AttemptStream

WORKER = "fuzz-worker"
ANSWER_TIMEOUT = 10.0
"""Seconds an attempt-stream request may wait for its answer (the SDK's own timeout is 10 s)."""
KINDS = ("started", "declined", "heartbeat", "completed", "failed", "empty")
ANSWER_KINDS = {
    "started": "start",
    "declined": "start",
    "heartbeat": "heartbeat",
    "completed": "result",
    "failed": "result",
}
KNOWN = {
    "worker_id": st.sampled_from([WORKER, "someone-else"]),
    "attempt_id": st.one_of(st.uuids().map(str), st.just("not-a-uuid")),
}


def inner(kind: str, attempt_id: str, token: str) -> Message:
    """A valid request of each kind for a live attempt."""
    if kind == "started":
        return wpb.AttemptStarted(attempt_id=attempt_id, token=token, worker_id=WORKER)
    if kind == "declined":
        return wpb.AttemptDeclined(
            attempt_id=attempt_id, token=token, worker_id=WORKER, reason="handler_unknown"
        )
    if kind == "heartbeat":
        progress = struct_pb2.Struct()
        progress.update({"done": 1})
        return wpb.WorkerHeartbeat(
            worker_id=WORKER,
            attempts=[wpb.AttemptProgress(attempt_id=attempt_id, token=token, details=progress)],
        )
    if kind == "completed":
        return wpb.AttemptCompleted(
            attempt_id=attempt_id, token=token, output=struct_pb2.Value(string_value="ok")
        )
    return wpb.AttemptFailed(attempt_id=attempt_id, token=token, error_type="Boom", message="b")


def template(kind: str, attempt_id: str, token: str) -> wpb.StreamAttemptsRequest:
    if kind == "empty":
        return wpb.StreamAttemptsRequest()
    request = wpb.StreamAttemptsRequest()
    getattr(request, kind).CopyFrom(inner(kind, attempt_id, token))
    return request


Patch = tuple[str, Message, Any]
"""A request kind, hostile fields to lay over its template, and maybe a value for its output,
progress or error details (set in place: it may be too deep to copy)."""


def patches() -> st.SearchStrategy[Patch]:
    return st.tuples(
        st.sampled_from(KINDS),
        hostile.messages_of(wpb.StreamAttemptsRequest, KNOWN),
        st.one_of(st.none(), hostile.payload_values()),
    )


def build(patch: Patch, attempt_id: str, token: str) -> wpb.StreamAttemptsRequest:
    kind, fields, value = patch
    request = hostile.overlay(template(kind, attempt_id, token), fields)
    if value is not None:
        content = request.WhichOneof("message")
        if content == "completed":
            hostile.fill_value(request.completed.output, value)
        elif content == "failed" and isinstance(value, dict):
            request.failed.details.update(value)
        elif content == "heartbeat" and request.heartbeat.attempts and isinstance(value, dict):
            request.heartbeat.attempts[0].details.update(value)
    return request


def expected_answers(request: wpb.StreamAttemptsRequest, in_batch: bool) -> Iterator[int]:
    """The request_ids that must be answered: the request's, and unless it is itself in a
    batch (then its own batch is a batch inside a batch), those of its batch."""
    yield request.request_id
    if not in_batch:
        for item in request.batch:
            yield from expected_answers(item, True)


class Stream:
    """The raw attempt stream of a worker that reads batches, written as bytes."""

    def __init__(self, channel: aio.Channel) -> None:
        self.call = channel.stream_stream(
            "/squidmesh.v1.WorkerService/StreamAttempts",
            identity,
            wpb.StreamAttemptsResponse.FromString,
        )(metadata=((WORKER_ID_METADATA, WORKER), (BATCHES_METADATA, "1")))
        self.ids = itertools.count(1)

    def number(self, request: wpb.StreamAttemptsRequest) -> None:
        """Gives the request, and those of its batch, unique request_ids."""
        request.request_id = next(self.ids)
        for item in request.batch:
            self.number(item)

    async def answers(
        self, ids: set[int], what: object = ""
    ) -> dict[int, wpb.StreamAttemptsResponse]:
        """Reads until each of `ids` is answered; a request left unanswered fails the test."""
        found: dict[int, wpb.StreamAttemptsResponse] = {}
        while not ids <= found.keys():
            try:
                message = await asyncio.wait_for(self.call.read(), ANSWER_TIMEOUT)
            except TimeoutError:
                missing = ids - found.keys()
                raise AssertionError(f"requests {missing} never answered: {what}") from None
            assert isinstance(message, wpb.StreamAttemptsResponse), f"the stream ended: {what}"
            for answer in message.batch or (message,):
                if answer.request_id:
                    found[answer.request_id] = answer
        return found


async def test_attempt_stream_answers_every_hostile_request(
    fuzz_channel: aio.Channel, database_url: str, rows: Rows
) -> None:
    await register_orders(fuzz_channel)
    streams = [Stream(fuzz_channel)]
    examples = st.one_of(
        st.tuples(st.lists(patches(), min_size=1, max_size=3), st.booleans()),
        hostile.garbage(template("completed", "a", "t").SerializeToString()),
    )

    async def check(example: tuple[list[Patch], bool] | bytes) -> None:
        if streams[-1].call.done():  # broken by the example before (which failed): shrinking
            streams.append(Stream(fuzz_channel))
        stream = streams[-1]
        if isinstance(example, bytes):  # then a heartbeat shows the stream still serves
            await stream.call.write(example)
            beat = template("heartbeat", "", "")
            stream.number(beat)
            await stream.call.write(beat.SerializeToString())
            await stream.answers({beat.request_id}, example)
            return
        patch_list, batched = example
        run, attempt_id, token = await start_orders(fuzz_channel, database_url)
        if any(kind in ("heartbeat", "completed", "failed") for kind, _, _ in patch_list):
            claim = template("started", attempt_id, token)
            stream.number(claim)
            await stream.call.write(claim.SerializeToString())
            assert (await stream.answers({claim.request_id}))[claim.request_id].start.accepted
        before = await rows.counts()
        requests = [build(patch, attempt_id, token) for patch in patch_list]
        for request in requests:
            stream.number(request)
        if batched:
            # Written field by field: a deep value cannot be copied into a batch message.
            await stream.call.write(
                b"".join(hostile.field_bytes(6, r.SerializeToString()) for r in requests)
            )
        else:
            for request in requests:
                await stream.call.write(request.SerializeToString())
        ids = {n for r in requests for n in expected_answers(r, batched)}
        found = await stream.answers(ids, requests)
        for request in requests:
            answer = found[request.request_id].WhichOneof("message")
            kind = request.WhichOneof("message")
            if (batched and request.batch) or kind is None:
                assert answer == "rejected", (request, answer)
            else:
                assert answer in (ANSWER_KINDS[kind], "rejected"), (request, answer)
        assert await rows.counts() == before, "a stream request wrote runs or workers"
        # Whatever was recorded, the run can be read back.
        await call(
            fuzz_channel, RUN_METHODS["GetRun"], run_service_pb2.GetRunRequest(run_id=run.id)
        )

    await fuzz(examples, check, examples=250)
    assert len(streams) == 1, "the stream ended"
    streams[0].call.cancel()
    await assert_still_serves(fuzz_channel, database_url)


async def test_register_worker_answers_hostile_requests_clearly(
    fuzz_channel: aio.Channel, database_url: str, rows: Rows
) -> None:
    method = wpb.DESCRIPTOR.services_by_name["WorkerService"].methods_by_name["RegisterWorker"]
    template = wpb.RegisterWorkerRequest(
        worker_id="w1", queues=["orders"], handlers=["orders.reserve"], concurrency=4
    )
    examples = st.one_of(
        hostile.requests(template, {"worker_id": st.sampled_from(["w1", "w2"])}),
        hostile.garbage(template.SerializeToString()),
    )

    async def check(request: Message | bytes) -> None:
        await refused_cleanly(rows, lambda: call(fuzz_channel, method, request), request)

    await fuzz(examples, check, examples=80)
    await assert_still_serves(fuzz_channel, database_url)


async def test_the_sdk_stream_gets_every_answer_at_once_and_resends_nothing(
    fuzz_channel: aio.Channel, database_url: str
) -> None:
    await register_orders(fuzz_channel)
    stream = AttemptStream.for_channel(
        fuzz_channel, worker_id=WORKER, batches=True, request_timeout=CALL_TIMEOUT
    )
    stream.start()
    typed = ("started", "declined", "heartbeat", "completed", "failed")
    examples = st.sampled_from(typed).flatmap(
        lambda kind: st.tuples(
            st.just(kind),
            hostile.messages_of(type(inner(kind, "", "")), KNOWN),
            st.one_of(st.none(), hostile.payload_values()),
        )
    )

    async def check(example: Patch) -> None:
        kind, fields, value = example
        _, attempt_id, token = await start_orders(fuzz_channel, database_url)
        if kind in ("heartbeat", "completed", "failed"):
            claim = inner("started", attempt_id, token)
            assert isinstance(claim, wpb.AttemptStarted)
            assert (await stream.started(claim)).accepted
        request = hostile.overlay(inner(kind, attempt_id, token), fields)
        if value is not None and isinstance(request, wpb.AttemptCompleted):
            hostile.fill_value(request.output, value)
        # DecodeError: too deep for protobuf to copy into the stream's message; nothing sent.
        with contextlib.suppress(DecodeError):
            await asyncio.wait_for(getattr(stream, kind)(request), CALL_TIMEOUT)

    try:
        await fuzz(examples, check, examples=80)
        assert (stream.connections, stream.unanswered) == (1, 0), "requests were sent again"
    finally:
        await stream.close()
    await assert_still_serves(fuzz_channel, database_url)
