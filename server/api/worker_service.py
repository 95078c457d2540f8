"""WorkerService: worker registration and the attempt stream.

Requests on one stream are handled concurrently (a worker runs many attempts at once), each
answered with its request_id. Every answer is idempotent, so a worker that reconnects simply
sends its unanswered requests again.

A stream opened with the metadata "squidmesh-worker-id" is also where the server pushes
`CancelAttempts` (request_id 0) when attempts of that worker must stop; any replica asks for
it through the event hub, and the replica holding the stream sends it. On such a stream a
result with `accept_handoff` may be answered with the run's next attempt (`ResultAck.handoff`,
see `server.engine.handoff`), matched against the queues and handlers the worker registered,
and a failure that also has `accept_retry` with its retry (`ResultAck.retry`).

Several requests may arrive as one message (`batch`), and answers ready at once leave as one
message when the stream was opened with "squidmesh-accepts-batches: 1": under load most of a
stream's cost is per message, not per byte."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, TypeAlias

import grpc
from google.protobuf import duration_pb2
from grpc import aio
from squidmesh.v1 import worker_service_pb2 as pb
from squidmesh.v1 import worker_service_pb2_grpc as pb_grpc
from squidmesh.values import struct_to_dict, to_duration, to_value, value_to_python

from server.api import convert, sanity
from server.api.errors import check_request, handle_errors, log
from server.dispatch.publisher import CONSUMER_GROUP, TASK_NAME
from server.engine.commands import Engine
from server.engine.errors import DomainError, FieldViolation, InvalidArgument, Unavailable
from server.engine.model import Failure, FailureReason
from server.engine.views import HandoffOffer, StartDecision
from worker_sdk.attempt_stream import (
    BATCHES_METADATA,
    MAX_BATCH,
    WORKER_ID_METADATA,
    in_batches,
)

Context: TypeAlias = aio.ServicerContext[Any, Any]
Answers: TypeAlias = "asyncio.Queue[pb.StreamAttemptsResponse | None]"

DEFAULT_GONE_WITHIN = timedelta(hours=1)
"""ListWorkers also lists the workers gone within this long, unless told otherwise."""


class _Presence:
    """Records on the worker's row that one of its attempt streams opened, then closed
    (ListWorkers, ExplainRun). Best effort: a write that failed (Postgres down) when the stream
    opened is tried again at the stream's next heartbeat, so that the worker is still seen."""

    def __init__(self, engine: Engine, worker_id: str) -> None:
        self._engine = engine
        self._worker_id = worker_id
        self.connected_at: datetime | None = None
        """When the opening was recorded (None: not yet)."""

    async def opened(self) -> None:
        if self.connected_at is not None:
            return
        try:
            self.connected_at = await self._engine.worker_connected(self._worker_id)
        except Exception as exc:
            log.warning(
                "worker_connection_not_recorded", worker_id=self._worker_id, error=repr(exc)
            )

    async def closed(self) -> None:
        if self.connected_at is None:
            return
        try:
            await self._engine.worker_disconnected(self._worker_id, self.connected_at)
        except Exception as exc:
            log.warning(
                "worker_disconnection_not_recorded", worker_id=self._worker_id, error=repr(exc)
            )


class WorkerService(pb_grpc.WorkerServiceServicer):
    def __init__(
        self,
        engine: Engine,
        broker_url: str,
        stream_prefix: str,
        heartbeat_interval_ms: int,
        max_message_bytes: int,
    ) -> None:
        self._engine = engine
        self._max_message_bytes = max_message_bytes
        self._broker_url = broker_url
        self._stream_prefix = stream_prefix
        self._heartbeat_interval_ms = heartbeat_interval_ms
        self._streams: dict[str, set[Answers]] = {}
        """The open attempt streams of each worker, by worker id."""
        self._open: set[Answers] = set()
        """Every open attempt stream."""
        self._requests: set[asyncio.Task[None]] = set()
        """Attempt-stream requests under way, on every stream (held here so that those of a
        stream that broke run to their end)."""
        self._offers: dict[str, HandoffOffer] = {}
        """What each worker with a stream here can be handed (its queues and handlers, read
        from its registration at its first result that accepts a handoff)."""
        self._closings: set[asyncio.Task[None]] = set()
        """Streams' closings being recorded (held here: they outlive their stream)."""

    def close_streams(self) -> None:
        """Ends every attempt stream (server shutdown): their workers reconnect to another
        replica, or to this one once restarted, and resend what is unanswered."""
        for answers in self._open:
            answers.put_nowait(None)

    def stop_attempts(self, worker_id: str, attempt_ids: list[str], reason: str) -> None:
        """Pushes a CancelAttempts to the worker's streams on this replica, if any."""
        for answers in self._streams.get(worker_id, ()):
            answers.put_nowait(
                pb.StreamAttemptsResponse(
                    cancel=pb.CancelAttempts(attempt_ids=attempt_ids, reason=reason)
                )
            )

    @handle_errors
    async def RegisterWorker(
        self, request: pb.RegisterWorkerRequest, context: Context
    ) -> pb.RegisterWorkerResponse:
        if not request.worker_id:
            raise InvalidArgument(
                "worker_id is required", [FieldViolation("worker_id", "must not be empty")]
            )
        await self._engine.register_worker(
            request.worker_id,
            list(request.queues),
            list(request.handlers),
            request.concurrency,
            dict(request.labels),
        )
        if request.worker_id in self._streams:  # re-registered with its stream open here
            self._offers[request.worker_id] = HandoffOffer(
                request.worker_id, frozenset(request.queues), frozenset(request.handlers)
            )
        interval = duration_pb2.Duration()
        interval.FromMilliseconds(self._heartbeat_interval_ms)
        return pb.RegisterWorkerResponse(
            worker_id=request.worker_id,
            broker_url=self._broker_url,
            stream_prefix=self._stream_prefix,
            consumer_group=CONSUMER_GROUP,
            heartbeat_interval=interval,
            task_name=TASK_NAME,
            accepts_batches=True,
            accepts_declines=True,
            max_message_bytes=self._max_message_bytes,
        )

    async def StreamAttempts(
        self, request_iterator: AsyncIterator[pb.StreamAttemptsRequest], context: Context
    ) -> AsyncIterator[pb.StreamAttemptsResponse]:
        metadata = dict(context.invocation_metadata() or ())
        worker_id = str(metadata.get(WORKER_ID_METADATA, ""))
        if not worker_id or len(worker_id) > sanity.MAX_IDENTIFIER:
            # Only the worker that claimed an attempt may report on it: a stream says whose.
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"open the attempt stream with the metadata {WORKER_ID_METADATA}: the "
                f"worker's id (at most {sanity.MAX_IDENTIFIER} characters)",
            )
        batches = metadata.get(BATCHES_METADATA) == "1"
        presence = _Presence(self._engine, worker_id)
        await presence.opened()
        answers: Answers = asyncio.Queue()
        pending: set[asyncio.Task[None]] = set()
        self._open.add(answers)
        self._streams.setdefault(worker_id, set()).add(answers)

        async def answer(request: pb.StreamAttemptsRequest) -> None:
            if request.WhichOneof("message") == "heartbeat":
                await presence.opened()  # if it failed when the stream opened
            try:
                response = await self._handle(request, worker_id)
            except Unavailable:  # no answer: the worker sends it again
                log.warning("attempt_stream_request_unavailable", request_id=request.request_id)
                return
            except DomainError as exc:  # unreadable: answered refused, never sent again
                response = _refused(request, exc.message)
            except Exception:
                # No answer: the worker times the request out and sends it again.
                log.exception("attempt_stream_request_failed", request_id=request.request_id)
                return
            response.request_id = request.request_id
            await answers.put(response)

        async def read() -> None:
            try:
                async for message in request_iterator:
                    requests = list(message.batch)
                    if not requests or message.request_id or message.WhichOneof("message"):
                        requests.append(message)  # alone, or a batch that carries more
                    for request in requests:
                        # A batch inside a batch, or a batch that also carries a request, is
                        # answered as unreadable (a top-level batch's items are served).
                        if request.batch:
                            request = pb.StreamAttemptsRequest(request_id=request.request_id)
                        task = asyncio.create_task(answer(request))
                        for tasks in (pending, self._requests):
                            tasks.add(task)
                            task.add_done_callback(tasks.discard)
                if pending:
                    # wait(), not gather(): cancelled when the stream breaks, it leaves them
                    # running (see below).
                    await asyncio.wait(pending)
            finally:
                await answers.put(None)

        reader = asyncio.create_task(read())
        try:
            while (response := await answers.get()) is not None:
                if not batches or answers.empty():
                    yield response
                    continue
                ready = [response]
                while len(ready) < MAX_BATCH and not answers.empty():
                    if (more := answers.get_nowait()) is None:
                        answers.put_nowait(None)  # the end: after what is ready
                        break
                    ready.append(more)
                for batch in in_batches(ready):
                    yield batch[0] if len(batch) == 1 else pb.StreamAttemptsResponse(batch=batch)
        finally:
            self._open.discard(answers)
            streams = self._streams.get(worker_id, set())
            streams.discard(answers)
            if not streams:
                self._streams.pop(worker_id, None)
                self._offers.pop(worker_id, None)
            # Recorded in a task of its own: a stream cancelled again must not lose it.
            closing = asyncio.create_task(presence.closed())
            self._closings.add(closing)
            closing.add_done_callback(self._closings.discard)
            reader.cancel()
            # Requests under way finish (their answers go nowhere): a result already written
            # must still publish the next step, or it would wait for the dispatch timeout.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    @handle_errors
    async def ListWorkers(
        self, request: pb.ListWorkersRequest, context: Context
    ) -> pb.ListWorkersResponse:
        gone_within = DEFAULT_GONE_WITHIN
        if request.HasField("gone_within"):
            gone_within = request.gone_within.ToTimedelta()
            if gone_within < timedelta(0):
                raise InvalidArgument(
                    "gone_within must not be negative",
                    [FieldViolation("gone_within", "must be >= 0")],
                )
        found = await self._engine.list_workers(request.queue, gone_within)
        return pb.ListWorkersResponse(workers=[convert.worker(w) for w in found])

    async def _offer(
        self, worker_id: str, accept: bool, retries: bool = False
    ) -> HandoffOffer | None:
        """What the worker behind a result that accepts a handoff (and with `retries`, its
        retry) can be handed."""
        if not accept:
            return None
        offer = self._offers.get(worker_id)
        if offer is None:
            offer = await self._engine.handoff_offer(worker_id)
            if offer is not None and worker_id in self._streams:
                self._offers[worker_id] = offer
        return replace(offer, retries=True) if offer is not None and retries else offer

    async def _handle(
        self, request: pb.StreamAttemptsRequest, worker_id: str
    ) -> pb.StreamAttemptsResponse:
        kind = request.WhichOneof("message")
        if kind in ("started", "declined"):
            # Ids and tokens: a request with unreadable ones is refused whole.
            check_request(request)
            _check_worker(getattr(request, kind).worker_id, worker_id, kind)
        if kind == "started":
            started = request.started
            decision = await self._engine.claim_attempt(
                convert.parse_uuid(started.attempt_id, "started.attempt_id"),
                started.token,
                started.worker_id,
            )
            return pb.StreamAttemptsResponse(start=_start_decision(decision))
        if kind == "declined":
            declined = request.declined
            decision = await self._engine.decline_attempt(
                convert.parse_uuid(declined.attempt_id, "declined.attempt_id"),
                declined.token,
                declined.worker_id,
            )
            return pb.StreamAttemptsResponse(start=_start_decision(decision))
        if kind == "heartbeat":
            beat = request.heartbeat
            _check_worker(beat.worker_id, worker_id, kind)
            check_request(  # progress apart: bad progress is dropped, the lease renewed
                pb.WorkerHeartbeat(
                    worker_id=beat.worker_id,
                    attempts=[
                        pb.AttemptProgress(attempt_id=a.attempt_id, token=a.token)
                        for a in beat.attempts
                    ],
                )
            )
            result = await self._engine.heartbeat(
                beat.worker_id,
                [
                    (
                        convert.parse_uuid(a.attempt_id, "heartbeat.attempts.attempt_id"),
                        a.token,
                        _progress(a),
                    )
                    for a in beat.attempts
                ],
            )
            return pb.StreamAttemptsResponse(
                heartbeat=pb.HeartbeatAck(
                    cancel_attempt_ids=result.cancel, lost_attempt_ids=result.lost
                )
            )
        if kind == "completed":
            done = request.completed
            check_request(pb.AttemptCompleted(attempt_id=done.attempt_id, token=done.token))
            attempt_id = convert.parse_uuid(done.attempt_id, "completed.attempt_id")
            offer = await self._offer(worker_id, done.accept_handoff)
            invalid = sanity.problems(done.output, "output")
            if invalid:
                result_decision = await self._engine.fail_attempt(
                    attempt_id,
                    done.token,
                    _unstorable("output", invalid),
                    None,
                    offer,
                    reporter=worker_id,
                )
            else:
                result_decision = await self._engine.complete_attempt(
                    attempt_id, done.token, value_to_python(done.output), offer, reporter=worker_id
                )
        elif kind == "failed":
            failed = request.failed
            check_request(pb.AttemptFailed(attempt_id=failed.attempt_id, token=failed.token))
            attempt_id = convert.parse_uuid(failed.attempt_id, "failed.attempt_id")
            offer = await self._offer(worker_id, failed.accept_handoff, failed.accept_retry)
            invalid = sanity.problems(failed)
            if invalid:
                failure = _unstorable("error", invalid)
            else:
                failure = Failure(
                    reason=FailureReason.CANCELLED
                    if failed.error_type == "Cancelled"
                    else FailureReason.HANDLER_ERROR,
                    type=failed.error_type,
                    message=failed.message,
                    details=struct_to_dict(failed.details),
                    non_retryable=failed.non_retryable,
                )
            retry_after = (
                failed.retry_after.ToMilliseconds() if failed.HasField("retry_after") else None
            )
            result_decision = await self._engine.fail_attempt(
                attempt_id,
                failed.token,
                failure,
                None if invalid else retry_after,
                offer,
                reporter=worker_id,
            )
        else:
            raise InvalidArgument(
                "the request has no content that can be read (or is a batch inside a batch, "
                "or a batch that also carries a request)",
                [],
            )
        handoff, retry = result_decision.handoff, result_decision.retry
        return pb.StreamAttemptsResponse(
            result=pb.ResultAck(
                accepted=result_decision.accepted,
                refusal_reason=result_decision.refusal_reason,
                handoff=pb.Handoff(
                    attempt_id=str(handoff.attempt_id),
                    token=handoff.token,
                    start=_start_decision(handoff.start),
                )
                if handoff is not None
                else None,
                retry=pb.RetryHandoff(
                    attempt_id=str(retry.attempt_id),
                    token=retry.token,
                    delay=to_duration(retry.delay_ms / 1000),
                )
                if retry is not None
                else None,
            )
        )


def _check_worker(named: str, stream_worker: str, kind: str) -> None:
    """A claim, decline or heartbeat names the worker of the stream it comes on."""
    if named != stream_worker:
        raise InvalidArgument(
            f"{kind}.worker_id is not the worker of this attempt stream",
            [FieldViolation(f"{kind}.worker_id", "must be the stream's squidmesh-worker-id")],
        )


def _progress(beat: pb.AttemptProgress) -> dict[str, Any] | None:
    """A heartbeat's progress, if it can be stored: otherwise the lease is renewed all the same
    and the progress dropped (a handler's bad progress must not cost it, or the worker's other
    attempts, their leases)."""
    if not beat.HasField("details"):
        return None
    invalid = sanity.problems(beat.details, "progress")
    if invalid:
        log.warning(
            "attempt_progress_dropped",
            attempt=beat.attempt_id,
            problems=[f"{v.field}: {v.description}" for v in invalid],
        )
        return None
    return struct_to_dict(beat.details)


def _unstorable(what: str, invalid: list[FieldViolation]) -> Failure:
    """The attempt's failure when its output or error cannot be stored (a NUL character, NaN):
    it fails for good rather than be reported again and again."""
    return Failure(
        reason=f"{what}_invalid",
        type=f"{what.capitalize()}Invalid",
        message=f"the handler's {what} cannot be stored: "
        + "; ".join(f"{v.field} {v.description}" for v in invalid),
        details={"problems": [{"field": v.field, "problem": v.description} for v in invalid]},
        non_retryable=True,
    )


def _refused(request: pb.StreamAttemptsRequest, message: str) -> pb.StreamAttemptsResponse:
    """The answer to a request with unreadable ids or tokens (or none at all), in the answer
    kind the worker waits for, so that it drops the request instead of sending it again."""
    kind = request.WhichOneof("message")
    reason = f"invalid: {message}"
    if kind in ("started", "declined"):
        return pb.StreamAttemptsResponse(
            start=pb.StartDecision(accepted=False, refusal_reason=reason)
        )
    if kind in ("completed", "failed"):
        return pb.StreamAttemptsResponse(result=pb.ResultAck(accepted=False, refusal_reason=reason))
    if kind == "heartbeat":  # none of these attempts can be this worker's
        lost = [a.attempt_id for a in request.heartbeat.attempts]
        return pb.StreamAttemptsResponse(heartbeat=pb.HeartbeatAck(lost_attempt_ids=lost))
    return pb.StreamAttemptsResponse(rejected=pb.RequestRejected(message=message))


def _start_decision(decision: StartDecision) -> pb.StartDecision:
    timeout = duration_pb2.Duration()
    timeout.FromMilliseconds(decision.heartbeat_timeout_ms)
    attempt_timeout = None
    if decision.attempt_timeout_ms:
        attempt_timeout = duration_pb2.Duration()
        attempt_timeout.FromMilliseconds(decision.attempt_timeout_ms)
    return pb.StartDecision(
        accepted=decision.accepted,
        refusal_reason=decision.refusal_reason,
        run_id=str(decision.run_id) if decision.run_id else "",
        workflow=decision.workflow,
        step=decision.step,
        handler=decision.handler,
        attempt_number=decision.attempt_number,
        input=to_value(decision.input, strict=False) if decision.accepted else None,
        idempotency_key=decision.idempotency_key,
        heartbeat_timeout=timeout,
        attempt_timeout=attempt_timeout,
    )
