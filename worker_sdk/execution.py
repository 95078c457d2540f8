"""Runs one handler call and turns whatever happens into an outcome to report.

Async handlers run as an asyncio task that `StepContext.request_cancel()` cancels. Sync
handlers run in the worker's bounded thread pool (so the event loop and heartbeats never
stall); they cannot be interrupted and should poll `ctx.cancel_event`. A handler that returns
normally after cancellation was requested is reported as completed: it did the work.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from google.protobuf import struct_pb2
from squidmesh.v1 import worker_service_pb2
from squidmesh.values import to_value

from worker_sdk.context import StepContext
from worker_sdk.errors import Failure
from worker_sdk.workflow import Handler

__all__ = ["Completed", "Outcome", "execute", "outcome_from_result"]


@dataclass(frozen=True)
class Completed:
    """A handler that returned; `output` is its JSON result."""

    output: struct_pb2.Value

    def to_proto(self, attempt_id: str, token: str) -> worker_service_pb2.AttemptCompleted:
        return worker_service_pb2.AttemptCompleted(
            attempt_id=attempt_id, token=token, output=self.output
        )


Outcome = Completed | Failure


async def execute(
    handler: Handler, input: Any, ctx: StepContext, executor: Executor | None
) -> Outcome:
    """Calls the handler and classifies the result. Only the cancellation of the caller
    itself propagates (as `asyncio.CancelledError`); everything else is an outcome."""
    try:
        if handler.is_async:
            result = await _run_async(handler, input, ctx)
        else:
            loop = asyncio.get_running_loop()
            call = functools.partial(handler.call, input, ctx)
            result = await loop.run_in_executor(executor, contextvars.copy_context().run, call)
    except _HandlerCancelled:
        return Failure.cancelled(f"attempt cancelled: {ctx.cancel_reason or 'requested'}")
    except asyncio.CancelledError:
        if _caller_cancelled():
            raise
        # The handler raised CancelledError itself (e.g. from a cancelled inner operation).
        return Failure.cancelled()
    except BaseException as exc:  # any handler error is reported, even SystemExit
        return Failure.from_exception(exc)
    return outcome_from_result(result)


def outcome_from_result(result: Any) -> Outcome:
    """A handler's return value as an outcome: its JSON output, or a non-retryable
    "OutputNotSerializable" failure."""
    try:
        return Completed(to_value(result))
    except (TypeError, ValueError, RecursionError) as exc:
        return Failure.output_not_serializable(exc)


class _HandlerCancelled(Exception):
    """The async handler's task was cancelled through its context."""


async def _run_async(handler: Handler, input: Any, ctx: StepContext) -> Any:
    task: asyncio.Future[Any] = asyncio.ensure_future(handler.call(input, ctx))
    ctx.on_cancel(task.cancel)
    try:
        return await task
    except asyncio.CancelledError:
        if _caller_cancelled():
            raise
        if ctx.cancelled:
            raise _HandlerCancelled from None
        raise


def _caller_cancelled() -> bool:
    """True when the task running us is being cancelled (worker shutdown), as opposed to the
    handler's own task being cancelled."""
    current = asyncio.current_task()
    return current is not None and current.cancelling() > 0
