"""A claim or result the server answers `rejected` (it could not read it: the fuzz suite sent
one whose bytes did not decode) is a refusal like any other: the SDK drops it and never sends
it again, instead of failing with a protocol error."""

from __future__ import annotations

import asyncio

from squidmesh.v1 import worker_service_pb2 as pb

from tests.unit.test_sdk_attempt_stream import FakeCall
from worker_sdk.attempt_stream import AttemptStream


async def test_a_rejected_claim_or_result_is_refused_and_not_sent_again() -> None:
    call = FakeCall()
    stream = AttemptStream(lambda: call)
    stream.start()
    try:
        claim = asyncio.create_task(stream.started(pb.AttemptStarted(attempt_id="a")))
        result = asyncio.create_task(stream.completed(pb.AttemptCompleted(attempt_id="a")))
        await call.wait_written(2)
        rejected = pb.RequestRejected(message="the request cannot be decoded")
        call.answer_together(
            [
                pb.StreamAttemptsResponse(request_id=r.request_id, rejected=rejected)
                for r in call.written
            ]
        )
        decision, ack = await asyncio.wait_for(asyncio.gather(claim, result), 5)
        assert (decision.accepted, ack.accepted) == (False, False)
        assert ack.refusal_reason == "rejected: the request cannot be decoded"
        assert (stream.unanswered, stream.connections, len(call.written)) == (0, 1, 2)
    finally:
        await stream.close()
