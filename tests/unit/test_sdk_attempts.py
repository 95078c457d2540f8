"""The attempt runner's cancellations: the attempt timeout enforced locally, and the server's
cancel pushed on the attempt stream (in-memory fakes; no server)."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import pytest
from squidmesh.v1 import worker_service_pb2 as pb
from squidmesh.values import to_duration

from tests.unit.test_sdk_attempt_stream import FakeServer
from worker_sdk import StepContext
from worker_sdk.attempt_stream import AttemptStream
from worker_sdk.attempts import MAX_HANDOFFS_IN_A_ROW, AttemptRunner
from worker_sdk.workflow import Handler


def decision(attempt_timeout: float | None = None) -> pb.StartDecision:
    message = pb.StartDecision(accepted=True, run_id="r1", step="s", attempt_number=1)
    if attempt_timeout is not None:
        message.attempt_timeout.CopyFrom(to_duration(attempt_timeout))
    return message


class FakeStream:
    """Accepts every claim with `decision` and records the reported results."""

    def __init__(self, decision: pb.StartDecision) -> None:
        self.decision = decision
        self.results: list[pb.AttemptCompleted | pb.AttemptFailed] = []

    async def started(self, message: pb.AttemptStarted) -> pb.StartDecision:
        return self.decision

    async def completed(self, message: pb.AttemptCompleted) -> pb.ResultAck:
        self.results.append(message)
        return pb.ResultAck(accepted=True)

    async def failed(self, message: pb.AttemptFailed) -> pb.ResultAck:
        self.results.append(message)
        return pb.ResultAck(accepted=True)


def runner_for(
    stream: Any, fn: Any, executor: ThreadPoolExecutor | None = None, **options: Any
) -> AttemptRunner:
    return AttemptRunner(
        worker_id="w-1",
        stream=cast(AttemptStream, stream),
        handlers={"w.s": Handler.of("w.s", fn, "default")},
        executor=executor,
        concurrency=1,
        **options,
    )


async def run_attempt(runner: AttemptRunner) -> None:
    await asyncio.wait_for(runner.run("a1", "tok", "r1", "s", "w.s"), 5)


# -- the attempt timeout ----------------------------------------------------------------------


def test_the_context_takes_the_attempt_timeout_from_the_decision() -> None:
    before = time.monotonic()
    ctx = StepContext.from_decision("a1", decision(attempt_timeout=10))
    assert ctx.attempt_timeout == 10
    assert ctx.deadline is not None and before + 10 <= ctx.deadline <= time.monotonic() + 10
    remaining = ctx.time_remaining()
    elapsed = time.monotonic() - before  # however long a busy machine took since
    assert remaining is not None and 10 - elapsed <= remaining <= 10
    unlimited = StepContext.from_decision("a1", decision())
    assert unlimited.attempt_timeout is None and unlimited.deadline is None
    assert unlimited.time_remaining() is None
    expired = StepContext.from_decision("a1", decision(attempt_timeout=0.001))
    time.sleep(0.01)
    assert expired.time_remaining() == 0


async def test_an_async_handler_past_its_attempt_timeout_is_cancelled() -> None:
    handler_cancelled = asyncio.Event()

    async def slow(input: Any, ctx: StepContext) -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            handler_cancelled.set()
            raise

    stream = FakeStream(decision(attempt_timeout=0.1))
    began = time.monotonic()
    await run_attempt(runner_for(stream, slow))
    assert handler_cancelled.is_set() and time.monotonic() - began < 2
    [result] = stream.results
    assert isinstance(result, pb.AttemptFailed) and result.error_type == "Cancelled"
    assert "timed out" in result.message


async def test_a_sync_handler_past_its_attempt_timeout_sees_the_cancel_event() -> None:
    seen: list[tuple[bool, str]] = []

    def slow(input: Any, ctx: StepContext) -> None:
        seen.append((ctx.cancel_event.wait(5), ctx.cancel_reason))
        ctx.raise_if_cancelled()

    stream = FakeStream(decision(attempt_timeout=0.1))
    with ThreadPoolExecutor(1) as pool:
        await run_attempt(runner_for(stream, slow, pool))
    assert seen == [(True, "timed out")]
    [result] = stream.results
    assert isinstance(result, pb.AttemptFailed) and result.error_type == "Cancelled"


async def test_the_timeout_timer_ends_with_the_attempt() -> None:
    contexts: list[StepContext] = []

    async def quick(input: Any, ctx: StepContext) -> dict[str, int]:
        contexts.append(ctx)
        return {"n": 1}

    stream = FakeStream(decision(attempt_timeout=0.05))
    await run_attempt(runner_for(stream, quick))
    await asyncio.sleep(0.15)  # well past the deadline
    assert not contexts[0].cancelled
    assert isinstance(stream.results[0], pb.AttemptCompleted)


# -- cancellations pushed by the server -------------------------------------------------------


async def test_a_cancel_pushed_on_the_stream_cancels_the_running_handler() -> None:
    handler_started = asyncio.Event()
    handler_cancelled = asyncio.Event()

    async def slow(input: Any, ctx: StepContext) -> None:
        handler_started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            handler_cancelled.set()
            raise

    server = FakeServer()
    stream = AttemptStream(server.open, min_backoff=0.01)
    runner = runner_for(stream, slow)
    stream.on_cancel = runner.cancel  # as the Worker wires it
    stream.start()
    try:
        running = asyncio.create_task(run_attempt(runner))
        call = await server.next_call(1)
        await call.wait_written(1)
        call.answer(call.written[0].request_id)
        await asyncio.wait_for(handler_started.wait(), 5)
        call.push_cancel(["a1"], "run cancelled")
        await asyncio.wait_for(handler_cancelled.wait(), 5)
        await call.wait_written(2)
        failed = call.written[1]
        assert failed.failed.error_type == "Cancelled" and "run cancelled" in failed.failed.message
        call.answer_result(failed.request_id)
        await running
    finally:
        await stream.close()


async def test_a_cancel_pushed_right_behind_the_start_decision_is_not_lost() -> None:
    ran_uncancelled = asyncio.Event()

    async def handler(input: Any, ctx: StepContext) -> None:
        await asyncio.sleep(0)  # the first point where a cancelled task stops
        ran_uncancelled.set()

    server = FakeServer()
    stream = AttemptStream(server.open, min_backoff=0.01)
    runner = runner_for(stream, handler)
    stream.on_cancel = runner.cancel
    stream.start()
    try:
        running = asyncio.create_task(run_attempt(runner))
        call = await server.next_call(1)
        await call.wait_written(1)
        # Both read in one go: the cancel is handled before the claim's waiter resumes.
        call.answer(call.written[0].request_id)
        call.push_cancel(["a1"], "run cancelled")
        await call.wait_written(2)
        failed = call.written[1]
        assert failed.failed.error_type == "Cancelled" and not ran_uncancelled.is_set()
        call.answer_result(failed.request_id)
        await running
    finally:
        await stream.close()


async def test_a_cancel_while_the_result_is_reported_leaves_the_finished_handler_alone() -> None:
    class SlowAck(FakeStream):
        """Answers the result only once released, as a busy server would."""

        def __init__(self) -> None:
            super().__init__(decision())
            self.reporting = asyncio.Event()
            self.release = asyncio.Event()

        async def completed(self, message: pb.AttemptCompleted) -> pb.ResultAck:
            self.reporting.set()
            await self.release.wait()
            return await super().completed(message)

    contexts: list[StepContext] = []

    async def handler(input: Any, ctx: StepContext) -> str:
        contexts.append(ctx)
        return "done"

    stream = SlowAck()
    runner = runner_for(stream, handler)
    attempt = asyncio.create_task(run_attempt(runner))
    await asyncio.wait_for(stream.reporting.wait(), 5)
    runner.cancel(["a1"], "lease lost")  # a heartbeat answer racing the result
    stream.release.set()
    await attempt
    assert not contexts[0].cancelled
    assert [type(r) for r in stream.results] == [pb.AttemptCompleted]


# -- handoff --------------------------------------------------------------------------------


class HandoffStream(FakeStream):
    """Answers each result with the next of `chain` (a handoff), then with none."""

    def __init__(self, chain: list[str]) -> None:
        super().__init__(decision())
        self.chain = list(chain)
        self.accepts: list[bool] = []
        self.on_result: Any = None

    async def completed(self, message: pb.AttemptCompleted) -> pb.ResultAck:
        self.results.append(message)
        self.accepts.append(message.accept_handoff)
        if self.on_result is not None:
            self.on_result(message)
        if not message.accept_handoff or not self.chain:
            return pb.ResultAck(accepted=True)
        next_id = self.chain.pop(0)
        start = pb.StartDecision(
            accepted=True, run_id="r1", step=next_id, handler="w.s", attempt_number=1
        )
        return pb.ResultAck(
            accepted=True, handoff=pb.Handoff(attempt_id=next_id, token=f"t-{next_id}", start=start)
        )


async def test_a_handed_off_attempt_runs_at_once_in_the_same_slot() -> None:
    steps: list[str] = []
    in_flight: list[int] = []

    async def record(input: Any, ctx: StepContext) -> dict[str, str]:
        steps.append(ctx.step)
        in_flight.append(runner.in_flight)
        return {"step": ctx.step}

    stream = HandoffStream(["b", "c"])
    runner = runner_for(stream, record)
    await run_attempt(runner)
    assert steps == ["s", "b", "c"]
    assert in_flight == [1, 1, 1]  # one slot, one attempt at a time
    assert [(r.attempt_id, r.token) for r in stream.results] == [
        ("a1", "tok"),
        ("b", "t-b"),
        ("c", "t-c"),
    ]
    assert stream.accepts == [True, True, True]
    assert runner.in_flight == 0


async def test_no_handoff_is_accepted_past_the_limit_or_once_draining() -> None:
    async def quick(input: Any, ctx: StepContext) -> None:
        return None

    stream = HandoffStream([f"h{i}" for i in range(MAX_HANDOFFS_IN_A_ROW + 5)])
    await run_attempt(runner_for(stream, quick))
    assert len(stream.results) == MAX_HANDOFFS_IN_A_ROW + 1
    assert stream.accepts == [True] * MAX_HANDOFFS_IN_A_ROW + [False]

    draining = HandoffStream(["b"])
    runner = runner_for(draining, quick)
    runner.stop_handoffs()
    await run_attempt(runner)
    assert draining.accepts == [False] and len(draining.results) == 1


async def test_a_cancel_pushed_before_the_handoff_is_read_stops_that_attempt() -> None:
    async def slow_after_first(input: Any, ctx: StepContext) -> None:
        if ctx.step != "s":
            await asyncio.sleep(30)

    stream = HandoffStream(["b"])
    runner = runner_for(stream, slow_after_first)
    # The server pushes the cancel of "b" while the answer that hands "b" over is in flight.
    stream.on_result = lambda message: runner.cancel(["b"], "run cancelled")
    await run_attempt(runner)
    first, second = stream.results
    assert isinstance(first, pb.AttemptCompleted)
    assert isinstance(second, pb.AttemptFailed) and second.attempt_id == "b"
    assert second.error_type == "Cancelled" and "run cancelled" in second.message


class RetryStream(FakeStream):
    """Answers the first failure with its retry handed back after `delay` seconds."""

    def __init__(self, delay: float) -> None:
        super().__init__(decision())
        self.delay = delay
        self.claims: list[tuple[str, str, float]] = []
        self.failed_at = 0.0

    async def started(self, message: pb.AttemptStarted) -> pb.StartDecision:
        self.claims.append((message.attempt_id, message.token, time.monotonic()))
        number = len(self.claims)
        return pb.StartDecision(
            accepted=True, run_id="r1", step="s", handler="w.s", attempt_number=number
        )

    async def failed(self, message: pb.AttemptFailed) -> pb.ResultAck:
        self.results.append(message)
        if not (message.accept_handoff and message.accept_retry) or len(self.claims) > 1:
            return pb.ResultAck(accepted=True)
        self.failed_at = time.monotonic()
        retry = pb.RetryHandoff(attempt_id="a2", token="t-a2", delay=to_duration(self.delay))
        return pb.ResultAck(accepted=True, retry=retry)


async def test_a_retry_handed_back_is_claimed_in_the_same_slot_after_its_backoff() -> None:
    in_flight: list[int] = []

    async def flaky(input: Any, ctx: StepContext) -> dict[str, int]:
        in_flight.append(runner.in_flight)
        if ctx.attempt_number == 1:
            raise RuntimeError("try again")
        return {"attempt": ctx.attempt_number}

    stream = RetryStream(delay=0.05)
    runner = runner_for(stream, flaky)
    await run_attempt(runner)
    # Claimed like a delivered task (fenced by the server), once the backoff passed.
    assert [(i, t) for i, t, _ in stream.claims] == [("a1", "tok"), ("a2", "t-a2")]
    assert stream.claims[1][2] - stream.failed_at >= 0.05
    first, second = stream.results
    assert isinstance(first, pb.AttemptFailed) and first.accept_retry
    assert isinstance(second, pb.AttemptCompleted) and second.attempt_id == "a2"
    assert in_flight == [1, 1] and runner.in_flight == 0


async def test_no_retry_is_accepted_once_draining() -> None:
    async def failing(input: Any, ctx: StepContext) -> None:
        raise RuntimeError("no")

    stream = RetryStream(delay=0)
    runner = runner_for(stream, failing)
    runner.stop_handoffs()
    await run_attempt(runner)
    (failed,) = stream.results
    assert isinstance(failed, pb.AttemptFailed) and not failed.accept_retry
    assert len(stream.claims) == 1


# -- a task this worker cannot run --------------------------------------------------------


class DecliningStream(FakeStream):
    """Records the claims and the attempts given back."""

    def __init__(self) -> None:
        super().__init__(decision())
        self.claims: list[str] = []
        self.declines: list[pb.AttemptDeclined] = []

    async def started(self, message: pb.AttemptStarted) -> pb.StartDecision:
        self.claims.append(message.attempt_id)
        return self.decision

    async def declined(self, message: pb.AttemptDeclined) -> pb.StartDecision:
        self.declines.append(message)
        return pb.StartDecision(accepted=False, refusal_reason="declined")


async def test_a_task_for_a_handler_the_worker_lacks_is_given_back_unclaimed() -> None:
    async def never(input: Any, ctx: StepContext) -> None:
        raise AssertionError("not this handler")

    for declines in (True, False):  # False: a server that does not read AttemptDeclined
        stream = DecliningStream()
        runner = AttemptRunner(
            worker_id="w-1",
            stream=cast(AttemptStream, stream),
            handlers={"w.s": Handler.of("w.s", never, "default")},
            executor=None,
            concurrency=1,
            declines=declines,
        )
        await asyncio.wait_for(runner.run("a1", "tok", "r1", "s", "w.other"), 5)
        assert stream.claims == [] and stream.results == []
        given_back = [(d.attempt_id, d.token, d.worker_id, d.reason) for d in stream.declines]
        assert given_back == ([("a1", "tok", "w-1", "handler_unknown")] if declines else [])
        assert runner.in_flight == 0


# -- results larger than the server reads -----------------------------------------------------


@pytest.mark.parametrize(
    ("result", "expected_type"),
    [("x" * 20_000, "OutputTooLarge"), (ValueError("y" * 40_000), "ValueError")],
)
async def test_a_result_the_server_cannot_read_is_replaced_not_sent(
    result: object, expected_type: str
) -> None:
    """An output over the server's message size becomes a non-retryable OutputTooLarge; an
    error over it keeps its type (and retries) with its message cut and no details."""

    def handler(input: object) -> object:
        if isinstance(result, Exception):
            raise result
        return result

    stream = FakeStream(decision())
    runner = runner_for(stream, handler, max_message_bytes=10_000)
    await run_attempt(runner)
    (sent,) = stream.results
    assert isinstance(sent, pb.AttemptFailed) and sent.ByteSize() < 10_000
    assert sent.error_type == expected_type
    assert sent.non_retryable == (expected_type == "OutputTooLarge")
