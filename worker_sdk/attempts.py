"""One worker's attempts: claim, run, report, and the registry of the ones in flight.

The life of a delivered step task (`AttemptRunner.run`):
1. take one of the worker's `concurrency` slots;
2. claim it with `AttemptStarted`; refused (duplicate, stale, cancelled...) -> log and return,
   so the message is acked and the handler never runs. A task for a handler this worker
   lacks is given back instead (`AttemptDeclined`), for the server to publish again;
3. run the handler with its input and a `StepContext` (heartbeated while it runs). It is asked
   to stop (`cancel()`, `StepContext.request_cancel`) when the server pushes `CancelAttempts`
   on the stream, when a heartbeat's answer lists it (the fallback), or locally when its
   attempt timeout passes, which frees the slot of an async handler at once (a sync one
   frees it when it returns: it should poll `ctx.cancel_event`);
4. report `AttemptCompleted` / `AttemptFailed` and wait for the server's `ResultAck`
   (accepted or refused), then return so the message is acked.
The attempt stays registered (and heartbeated) until its result was answered.

Handoff: a result is reported with `accept_handoff`, keeping the slot for what follows. When
the server's answer hands over the run's next attempt (already claimed for this worker), it
runs in the same slot at once, from step 3, with no broker round trip; the task message is
acked once the last attempt of the chain was answered. A failure is reported with
`accept_retry` too: the answer may hand back the attempt's retry, not claimed, when its
backoff is short; the slot waits it out and claims the retry from step 2, as if the broker had
delivered it. A slot accepts at most `MAX_HANDOFFS_IN_A_ROW` in a row, so that the tasks
waiting in the queues get their turn, and none once the worker drains.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import structlog
from squidmesh.v1 import worker_service_pb2 as pb
from squidmesh.values import from_duration, to_struct, value_to_python

from worker_sdk.attempt_stream import AttemptStream
from worker_sdk.children import ChildRuns
from worker_sdk.clock import sleep_exactly
from worker_sdk.context import StepContext
from worker_sdk.errors import CANCELLED, Failure
from worker_sdk.execution import Completed, Outcome, execute
from worker_sdk.workflow import Handler

__all__ = ["AttemptRunner"]

log = structlog.get_logger("squidmesh.worker")

MAX_HANDOFFS_IN_A_ROW = 32
DEFAULT_MAX_MESSAGE_BYTES = 4 << 20
"""What a server that does not say (`max_message_bytes`) reads: gRPC's default."""
MESSAGE_MARGIN = 4096
"""Room for the rest of a result message (ids, token, flags) besides the output or error."""
_CANCELS_REMEMBERED = 1_000


@dataclass(eq=False)
class _Running:
    ctx: StepContext
    token: str
    handler_returned: bool = False
    """Its result is being reported: nothing left to cancel (a heartbeat answered while the
    result is on its way says "lost")."""


@dataclass(frozen=True)
class _Retry:
    """A retry handed back in the answer to its failure: claimed once its backoff passed."""

    attempt_id: str
    token: str
    delay: float
    handler: str
    run_id: str
    step: str


_Handed = pb.Handoff | _Retry
"""What the answer to a result hands over to the slot that reported it."""


class AttemptRunner:
    """Runs the attempts delivered to one worker; see the module docstring."""

    def __init__(
        self,
        *,
        worker_id: str,
        stream: AttemptStream,
        handlers: Mapping[str, Handler],
        executor: Executor | None,
        concurrency: int,
        handoff: bool = True,
        declines: bool = False,
        max_message_bytes: int = 0,
        children: ChildRuns | None = None,
    ) -> None:
        self._worker_id = worker_id
        self._children = children
        """How handlers start child runs (`StepContext.start_child_run`)."""
        self._max_message_bytes = max_message_bytes or DEFAULT_MAX_MESSAGE_BYTES
        self._stream = stream
        self._handlers = handlers
        self._executor = executor
        self._slots = asyncio.Semaphore(concurrency)
        self._log = log.bind(worker_id=worker_id)
        self._delivered: set[str] = set()
        """Attempts delivered and not finished (waiting for a slot, claiming, running)."""
        self._running: dict[str, _Running] = {}
        """Attempts claimed and accepted, until their result was answered."""
        self._early_cancels: dict[str, str] = {}
        """Cancellations of attempts not yet running, by attempt (the most recent
        `_CANCELS_REMEMBERED`): the server can push one right behind its start decision or
        the handoff of the attempt, before the waiter has resumed."""
        self._handoff = handoff
        """Whether results accept the run's next attempt (see the module docstring)."""
        self._declines = declines
        """Whether the server takes back the attempts this worker cannot run (AttemptDeclined);
        otherwise it publishes them again after its dispatch timeout."""
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def in_flight(self) -> int:
        return len(self._delivered)

    async def wait_idle(self) -> None:
        await self._idle.wait()

    def stop_handoffs(self) -> None:
        """Accept no more handoffs (the worker drains)."""
        self._handoff = False

    async def run(self, attempt_id: str, token: str, run_id: str, step: str, handler: str) -> None:
        """The step task: claim, run and report one attempt."""
        attempt_log = self._log.bind(attempt=attempt_id, run_id=run_id, step=step)
        if attempt_id in self._delivered:
            # Re-delivered while this worker still has it: the first delivery reports it.
            attempt_log.info("attempt_duplicate_delivery_dropped")
            return
        self._delivered.add(attempt_id)
        self._idle.clear()
        try:
            async with self._slots:
                handed = await self._claim_and_run(attempt_id, token, handler, attempt_log, 0)
                in_a_row = 0
                while handed is not None:
                    in_a_row += 1
                    if isinstance(handed, _Retry):
                        handed = await self._run_retry(handed, in_a_row)
                    else:
                        handed = await self._run_handoff(handed, in_a_row)
        finally:
            self._forget(attempt_id)

    def _forget(self, attempt_id: str) -> None:
        self._running.pop(attempt_id, None)
        self._early_cancels.pop(attempt_id, None)
        self._delivered.discard(attempt_id)
        if not self._delivered:
            self._idle.set()

    def cancel(self, attempt_ids: Iterable[str], reason: str) -> None:
        """Asks the handlers of these attempts to stop; one not running yet is asked when it
        starts."""
        for attempt_id in attempt_ids:
            running = self._running.get(attempt_id)
            if running is not None:
                if not running.handler_returned:
                    _request_cancel(running.ctx, reason)
            else:  # delivered and not running yet, or handed over in an answer not yet read
                self._early_cancels.setdefault(attempt_id, reason)
                if len(self._early_cancels) > _CANCELS_REMEMBERED:
                    del self._early_cancels[next(iter(self._early_cancels))]

    def progress(self) -> list[pb.AttemptProgress]:
        """One entry per running attempt, with the progress recorded since the last call."""
        entries = []
        for attempt_id, running in self._running.items():
            entry = pb.AttemptProgress(attempt_id=attempt_id, token=running.token)
            details = running.ctx.take_progress()
            if details is not None:
                try:
                    entry.details.CopyFrom(to_struct(details))
                except (TypeError, ValueError) as exc:
                    running.ctx.log.warning("heartbeat_details_not_json", error=str(exc))
            entries.append(entry)
        return entries

    def shortest_lease(self) -> float | None:
        """The smallest heartbeat timeout among the running attempts, if any is known."""
        leases = [
            r.ctx.heartbeat_timeout for r in self._running.values() if r.ctx.heartbeat_timeout
        ]
        return min(leases) if leases else None

    async def _claim_and_run(
        self, attempt_id: str, token: str, handler_name: str, attempt_log: Any, in_a_row: int
    ) -> _Handed | None:
        handler = self._handlers.get(handler_name)
        if handler is None:
            # Not ours to run (e.g. a newer version's handler during a rolling deploy): leave
            # the attempt unclaimed; the server publishes it again for a worker that has it.
            attempt_log.warning("attempt_handler_unknown", handler=handler_name)
            if self._declines:
                await self._stream.declined(
                    pb.AttemptDeclined(
                        attempt_id=attempt_id,
                        token=token,
                        worker_id=self._worker_id,
                        reason="handler_unknown",
                    )
                )
            return None
        decision = await self._stream.started(
            pb.AttemptStarted(attempt_id=attempt_id, token=token, worker_id=self._worker_id)
        )
        if not decision.accepted:
            attempt_log.info("attempt_refused", reason=decision.refusal_reason)
            return None
        return await self._run_accepted(attempt_id, token, handler, decision, attempt_log, in_a_row)

    async def _run_retry(self, retry: _Retry, in_a_row: int) -> _Handed | None:
        """Claims and runs a retry handed back in a failure's answer once its backoff passed;
        returns what follows, if anything."""
        attempt_log = self._log.bind(attempt=retry.attempt_id, run_id=retry.run_id, step=retry.step)
        try:
            await sleep_exactly(retry.delay)
            return await self._claim_and_run(
                retry.attempt_id, retry.token, retry.handler, attempt_log, in_a_row
            )
        finally:
            self._forget(retry.attempt_id)

    async def _run_handoff(self, handoff: pb.Handoff, in_a_row: int) -> _Handed | None:
        """Runs an attempt handed over in a result's answer; returns the next one, if any."""
        attempt_id, decision = handoff.attempt_id, handoff.start  # in _delivered already
        attempt_log = self._log.bind(attempt=attempt_id, run_id=decision.run_id, step=decision.step)
        try:
            handler = self._handlers.get(decision.handler)
            if handler is None:
                # The server hands over only the handlers this worker registered; should it
                # not, the attempt fails (and is retried through the queue), never hangs.
                failure = Failure(
                    "HandlerNotFound", f"this worker has no handler {decision.handler!r}"
                )
                await self._stream.failed(failure.to_proto(attempt_id, handoff.token))
                return None
            return await self._run_accepted(
                attempt_id, handoff.token, handler, decision, attempt_log, in_a_row
            )
        finally:
            self._forget(attempt_id)

    async def _run_accepted(
        self,
        attempt_id: str,
        token: str,
        handler: Handler,
        decision: pb.StartDecision,
        attempt_log: Any,
        in_a_row: int,
    ) -> _Handed | None:
        """Runs a claimed attempt's handler and reports its outcome; returns the attempt the
        answer hands over, if any (`in_a_row`: how many this slot ran so far)."""
        attempt_log = attempt_log.bind(
            run_id=decision.run_id, step=decision.step, attempt_number=decision.attempt_number
        )
        ctx = StepContext.from_decision(attempt_id, decision, attempt_log, self._children)
        running = self._running[attempt_id] = _Running(ctx, token)
        attempt_log.debug("attempt_started")
        began = time.monotonic()
        if attempt_id in self._early_cancels:
            _request_cancel(ctx, self._early_cancels.pop(attempt_id))

        step_input = value_to_python(decision.input) if decision.HasField("input") else {}
        with _cancel_at_deadline(ctx):
            outcome: Outcome = await execute(handler, step_input, ctx, self._executor)
        running.handler_returned = True
        accept_handoff = self._handoff and in_a_row < MAX_HANDOFFS_IN_A_ROW
        ack = await self._report(
            attempt_id, token, outcome, attempt_log, time.monotonic() - began, accept_handoff
        )
        handed: _Handed | None = None
        if ack.HasField("handoff"):
            handed = ack.handoff
        elif ack.HasField("retry"):
            handed = _Retry(
                ack.retry.attempt_id,
                ack.retry.token,
                from_duration(ack.retry.delay),
                decision.handler,
                decision.run_id,
                decision.step,
            )
        if handed is not None:
            # Registered before this one is forgotten, so the worker is never idle between.
            self._delivered.add(handed.attempt_id)
        self._forget(attempt_id)
        return handed

    async def _report(
        self,
        attempt_id: str,
        token: str,
        outcome: Outcome,
        attempt_log: Any,
        seconds: float,
        accept_handoff: bool,
    ) -> pb.ResultAck:
        duration_ms = round(seconds * 1000, 1)
        outcome = self._sendable(outcome)
        if isinstance(outcome, Completed):
            message = outcome.to_proto(attempt_id, token)
            message.accept_handoff = accept_handoff
            ack = await self._stream.completed(message)
            event = "attempt_completed"
            fields: dict[str, Any] = {}
        else:
            failed = outcome.to_proto(attempt_id, token)
            failed.accept_handoff = failed.accept_retry = accept_handoff
            ack = await self._stream.failed(failed)
            event = "attempt_cancelled" if outcome.error_type == CANCELLED else "attempt_failed"
            fields = {
                "error_type": outcome.error_type,
                "error": outcome.message,
                "non_retryable": outcome.non_retryable,
            }
            if "traceback" in outcome.details:
                fields["traceback"] = outcome.details["traceback"]
        if ack.accepted:
            # Successes are the common case: debug, so a busy worker's log stays readable.
            log_at = attempt_log.debug if isinstance(outcome, Completed) else attempt_log.info
            log_at(event, duration_ms=duration_ms, **fields)
        else:
            attempt_log.info(
                event, duration_ms=duration_ms, result_refused=ack.refusal_reason, **fields
            )
        return ack

    def _sendable(self, outcome: Outcome) -> Outcome:
        """The outcome, or what stands for it when its message would be more than the server
        reads (which would end the stream, and the resend would end it again, forever)."""
        limit = self._max_message_bytes - MESSAGE_MARGIN
        if isinstance(outcome, Completed):
            size = outcome.output.ByteSize()
            return outcome if size <= limit else Failure.output_too_large(size, limit)
        size = outcome.to_proto("", "").ByteSize()  # failures are the rare path
        return outcome if size <= limit else outcome.shortened(size, limit)


def _request_cancel(ctx: StepContext, reason: str) -> None:
    if not ctx.cancelled:
        ctx.log.info("attempt_cancel_requested", reason=reason)
        ctx.request_cancel(reason)


@contextlib.contextmanager
def _cancel_at_deadline(ctx: StepContext) -> Iterator[None]:
    """Requests cancellation when the attempt's deadline passes, until the block ends. The
    server (whose clock counts) fails the attempt as timed out; stopping the handler here
    frees the slot instead of running on for a result that would be refused."""
    remaining = ctx.time_remaining()
    if remaining is None:
        yield
        return
    timer = asyncio.get_running_loop().call_later(remaining, _request_cancel, ctx, "timed out")
    try:
        yield
    finally:
        timer.cancel()
