"""Handler outcomes: outputs, error classification, cancellation, the step context."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from squidmesh.v1 import worker_service_pb2
from squidmesh.values import from_duration, to_duration, to_value

from worker_sdk import (
    AttemptCancelledError,
    NonRetryableError,
    RetryableError,
    StepContext,
    Workflow,
    struct_to_dict,
    value_to_python,
)
from worker_sdk.errors import Failure
from worker_sdk.execution import Completed, execute, outcome_from_result
from worker_sdk.workflow import Handler


def ctx() -> StepContext:
    return StepContext(
        run_id="r1",
        workflow="w",
        step="s",
        attempt_id="a1",
        attempt_number=2,
        idempotency_key="r1:s",
    )


def handler(fn: Any) -> Handler:
    return Handler.of("w.s", fn, "default")


# -- errors -> AttemptFailed ----------------------------------------------------------------


def test_ordinary_exception_is_retryable_with_class_name_and_traceback() -> None:
    try:
        raise KeyError("missing")
    except KeyError as exc:
        failure = Failure.from_exception(exc)
    proto = failure.to_proto("a1", "tok")
    assert (proto.attempt_id, proto.token) == ("a1", "tok")
    assert proto.error_type == "KeyError"
    assert proto.message == "'missing'"
    assert not proto.non_retryable and not proto.HasField("retry_after")
    assert "KeyError" in struct_to_dict(proto.details)["traceback"]


def test_non_retryable_error() -> None:
    exc = NonRetryableError("card declined", {"code": 51}, error_type="CardDeclined")
    proto = Failure.from_exception(exc).to_proto("a1", "tok")
    assert proto.error_type == "CardDeclined" and proto.message == "card declined"
    assert proto.non_retryable
    assert struct_to_dict(proto.details) == {"code": 51}


def test_retryable_error_with_retry_after() -> None:
    proto = Failure.from_exception(RetryableError("busy", retry_after=1.5)).to_proto("a", "t")
    assert proto.error_type == "RetryableError" and not proto.non_retryable
    assert from_duration(proto.retry_after) == 1.5


def test_details_that_are_not_json_do_not_lose_the_error() -> None:
    exc = NonRetryableError("x", {"when": object(), "n": float("nan")})
    proto = Failure.from_exception(exc).to_proto("a", "t")
    assert proto.error_type == "NonRetryableError"
    assert "repr" in struct_to_dict(proto.details)


def test_cancellation_errors_are_reported_as_cancelled() -> None:
    assert Failure.from_exception(AttemptCancelledError()).error_type == "Cancelled"


# -- outputs --------------------------------------------------------------------------------


def test_output_serialisation() -> None:
    outcome = outcome_from_result({"a": [1, 2.5, "x", None, True, (3, 4)], "b": {"c": {}}})
    assert isinstance(outcome, Completed)
    assert value_to_python(outcome.output) == {
        "a": [1, 2.5, "x", None, True, [3, 4]],
        "b": {"c": {}},
    }
    proto = outcome.to_proto("a1", "tok")
    assert isinstance(proto, worker_service_pb2.AttemptCompleted)
    assert proto.output.struct_value.fields["a"].list_value.values[0].number_value == 1
    none = outcome_from_result(None)
    assert isinstance(none, Completed) and none.output.WhichOneof("kind") == "null_value"


@pytest.mark.parametrize(
    "bad", [{"when": object()}, {1: "int key"}, float("inf"), 2**60, {"s": {1, 2}}]
)
def test_non_serialisable_output_is_a_non_retryable_failure(bad: Any) -> None:
    outcome = outcome_from_result(bad)
    assert isinstance(outcome, Failure)
    assert outcome.error_type == "OutputNotSerializable" and outcome.non_retryable


def test_values_round_trip_and_durations() -> None:
    assert value_to_python(to_value({"n": 3, "f": 0.5})) == {"n": 3, "f": 0.5}
    assert isinstance(value_to_python(to_value(3)), int)
    d = to_duration(1.25)
    assert (d.seconds, d.nanos) == (1, 250_000_000)
    with pytest.raises(ValueError):
        to_duration(float("nan"))


# -- execute ----------------------------------------------------------------------------------


async def test_execute_async_and_sync_handlers() -> None:
    async def a(input: dict[str, int], c: StepContext) -> dict[str, int]:
        return {"n": input["n"] + c.attempt_number}

    def s(input: dict[str, int]) -> dict[str, Any]:
        return {"n": input["n"] * 10, "thread": threading.current_thread().name}

    with ThreadPoolExecutor(2, thread_name_prefix="step") as pool:
        first = await execute(handler(a), {"n": 1}, ctx(), pool)
        second = await execute(handler(s), {"n": 1}, ctx(), pool)
    assert isinstance(first, Completed) and value_to_python(first.output) == {"n": 3}
    assert isinstance(second, Completed)
    out = value_to_python(second.output)
    assert out["n"] == 10 and out["thread"].startswith("step")


async def test_execute_classifies_exceptions() -> None:
    def boom(input: Any) -> None:
        raise ValueError("bad amount")

    async def declined(input: Any) -> None:
        raise NonRetryableError("declined")

    def exits(input: Any) -> None:
        raise SystemExit(3)

    first = await execute(handler(boom), {}, ctx(), None)
    assert isinstance(first, Failure) and (first.error_type, first.message) == (
        "ValueError",
        "bad amount",
    )
    second = await execute(handler(declined), {}, ctx(), None)
    assert isinstance(second, Failure) and second.non_retryable
    third = await execute(handler(exits), {}, ctx(), None)
    assert isinstance(third, Failure) and third.error_type == "SystemExit"


async def test_cancelling_an_async_handler_reports_cancelled() -> None:
    started = asyncio.Event()

    async def slow(input: Any, c: StepContext) -> None:
        started.set()
        await asyncio.sleep(30)

    context = ctx()
    running = asyncio.create_task(execute(handler(slow), {}, context, None))
    await started.wait()
    context.request_cancel("cancel requested")
    outcome = await asyncio.wait_for(running, 5)
    assert isinstance(outcome, Failure) and outcome.error_type == "Cancelled"
    assert "cancel requested" in outcome.message
    assert context.cancelled and context.cancel_event.is_set()


async def test_sync_handler_polls_the_cancel_event() -> None:
    started = threading.Event()

    def polling(input: Any, c: StepContext) -> None:
        started.set()
        while True:
            c.cancel_event.wait(0.01)
            c.raise_if_cancelled()

    context = ctx()
    with ThreadPoolExecutor(1) as pool:
        running = asyncio.create_task(execute(handler(polling), {}, context, pool))
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 5)
        context.request_cancel("lease lost")
        outcome = await asyncio.wait_for(running, 5)
    assert isinstance(outcome, Failure) and outcome.error_type == "Cancelled"


async def test_caller_cancellation_propagates() -> None:
    async def slow(input: Any) -> None:
        await asyncio.sleep(30)

    running = asyncio.create_task(execute(handler(slow), {}, ctx(), None))
    await asyncio.sleep(0.01)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running


# -- context ----------------------------------------------------------------------------------


def test_context_from_decision_and_progress() -> None:
    decision = worker_service_pb2.StartDecision(
        accepted=True,
        run_id="r9",
        workflow="payment",
        step="charge",
        handler="payment.charge",
        attempt_number=3,
        idempotency_key="r9/charge",
        heartbeat_timeout=to_duration(15),
    )
    c = StepContext.from_decision("a9", decision)
    assert (c.run_id, c.workflow, c.step, c.attempt_id) == ("r9", "payment", "charge", "a9")
    assert (c.attempt_number, c.idempotency_key, c.heartbeat_timeout) == (3, "r9/charge", 15)
    assert c.take_progress() is None
    c.heartbeat({"done": 1})
    c.heartbeat({"done": 2})
    assert c.take_progress() == {"done": 2}
    assert c.take_progress() is None


def test_cancel_event_callbacks_and_raise() -> None:
    c = ctx()
    calls: list[str] = []
    c.on_cancel(lambda: calls.append("early"))
    c.raise_if_cancelled()  # not yet
    c.request_cancel("cancel requested")
    c.request_cancel("again")  # idempotent
    c.on_cancel(lambda: calls.append("late"))
    assert calls == ["early", "late"]
    assert c.cancelled and c.cancel_reason == "cancel requested"
    with pytest.raises(AttemptCancelledError):
        c.raise_if_cancelled()


def test_worker_collects_handlers_and_queues() -> None:
    from worker_sdk import Worker

    wf = Workflow("w")

    @wf.task(queue="fast")
    def one(input: Any) -> None:
        return None

    worker = Worker("127.0.0.1:1", [wf], worker_id="w-1")
    assert worker.queues == ["fast"] and set(worker.handlers) == {"w.one"}
    with pytest.raises(ValueError):
        Worker("x", [Workflow("empty")])
