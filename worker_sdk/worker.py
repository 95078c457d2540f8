"""The worker process: registers its workflows and itself with the server, consumes step
tasks from its queues through taskiq, runs the handlers, heartbeats, and drains gracefully.

    Worker("127.0.0.1:50051", [payment], concurrency=10).run_sync()
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import platform
import secrets
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import grpc
import structlog
from squidmesh import DEFAULT_ADDRESS
from squidmesh.v1 import (
    worker_service_pb2,
    worker_service_pb2_grpc,
    workflow_service_pb2,
    workflow_service_pb2_grpc,
)
from squidmesh.values import from_duration

from worker_sdk.attempt_stream import AttemptStream, AttemptStreamClosedError
from worker_sdk.attempts import AttemptRunner
from worker_sdk.broker import QueueConsumer, StepTaskBroker
from worker_sdk.children import ChildRuns
from worker_sdk.logs import configure_logging
from worker_sdk.workflow import Handler, Workflow

__all__ = ["CHANNEL_OPTIONS", "Worker", "default_worker_id"]


SDK_VERSION = "0.1.0"
DEFAULT_HEARTBEAT_INTERVAL = 5.0
CHANNEL_OPTIONS: list[tuple[str, int]] = [
    # Reconnect to a restarted server within ~2 s, not gRPC's default of up to 2 minutes.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
]
_RETRYABLE_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
T = TypeVar("T")


def default_worker_id() -> str:
    """The default worker id: hostname-pid-4 random hex digits."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"


class Worker:
    """Runs the task steps of `workflows`.

    `queues` defaults to every queue the workflows' task steps use. `concurrency` bounds the
    attempts running at once (and the threads running sync handlers). `broker_url` overrides
    the Redis URL the server hands out. `token` is sent as a bearer token. `handoff` lets the
    server answer a result with the run's next attempt, run at once in the same slot (see
    `worker_sdk.attempts`); turn it off to take every attempt from the queues. After a stop,
    attempts in flight get `drain_timeout` seconds (None: as long as they take) to finish;
    the worker then exits anyway, and the server retries those still running when their
    leases end.
    """

    def __init__(
        self,
        server: str = DEFAULT_ADDRESS,
        workflows: Sequence[Workflow] = (),
        *,
        queues: Sequence[str] | None = None,
        concurrency: int = 10,
        broker_url: str | None = None,
        worker_id: str | None = None,
        register_workflows: bool = True,
        token: str | None = None,
        handoff: bool = True,
        drain_timeout: float | None = 60.0,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        names = [w.name for w in workflows]
        if len(set(names)) != len(names):
            raise ValueError(f"the same workflow name is given twice: {names}")
        self.server = server
        self.workflows = list(workflows)
        self.handlers = _merge_handlers(self.workflows)
        if queues is None:
            queues = list(dict.fromkeys(q for w in self.workflows for q in w.queues))
        if isinstance(queues, str):
            raise TypeError("queues is a list of queue names, not a string")
        self.queues = list(dict.fromkeys(queues))
        if not self.queues:
            raise ValueError("no queue to consume: give workflows with task steps, or queues")
        self.concurrency = concurrency
        self.broker_url = broker_url
        self.worker_id = worker_id or default_worker_id()
        self.register_workflows = register_workflows
        self.handoff = handoff
        self.drain_timeout = drain_timeout
        self._token = token
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ()
        )
        # Bound lazily, so logging configured after this (run_sync) still applies.
        self._log = structlog.get_logger("squidmesh.worker", worker_id=self.worker_id)
        self._stop_requested = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None

    # -- control -------------------------------------------------------------------------

    def stop(self) -> None:
        """Graceful stop: consume nothing more, finish the attempts in flight, then return
        from `run()`. Safe from any thread and from signal handlers; idempotent."""
        self._stop_requested = True
        loop, event = self._loop, self._stop_event
        if loop is None or event is None:
            return
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        if current is loop:
            event.set()
        else:
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                loop.call_soon_threadsafe(event.set)

    def run_sync(self) -> None:
        """Runs the worker in this process (uvloop when available) until SIGTERM/SIGINT:
        the first signal drains the attempts in flight and returns (exit 0), a second one
        exits at once (unacked tasks are redelivered and the server retries them). Logging is
        configured (`configure_logging`) unless structlog already was."""
        if not structlog.is_configured():
            configure_logging()
        signals_seen = 0

        def on_signal(signum: int) -> None:
            nonlocal signals_seen
            signals_seen += 1
            name = signal.Signals(signum).name
            if signals_seen == 1:
                self._log.info("worker_signal_draining", signal=name)
                self.stop()
            else:
                self._log.warning("worker_signal_exit_now", signal=name)
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(128 + signum)

        # Until the loop runs, a signal still asks for a graceful stop (stop() records it).
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda received, _frame: on_signal(received))

        async def main() -> None:
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, on_signal, signum)
            await self.run()

        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(main())

    # -- the run -------------------------------------------------------------------------

    async def run(self) -> None:
        """Runs until `stop()`: registers, consumes, heartbeats; then drains and returns."""
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        if self._stop_requested:
            self._stop_event.set()
        channel = grpc.aio.insecure_channel(self.server, options=CHANNEL_OPTIONS)
        executor = ThreadPoolExecutor(self.concurrency, thread_name_prefix="squidmesh-step")
        stream: AttemptStream | None = None
        tasks: list[asyncio.Task[None]] = []
        children = ChildRuns(self.server, loop=self._loop, token=self._token)
        try:
            registration = await self._register(channel)
            if registration is None:
                return  # stopped before the server answered
            stream = AttemptStream.for_channel(
                channel,
                worker_id=self.worker_id,
                metadata=self._metadata,
                batches=registration.accepts_batches,
            )
            runner = AttemptRunner(
                worker_id=self.worker_id,
                stream=stream,
                handlers=self.handlers,
                executor=executor,
                concurrency=self.concurrency,
                handoff=self.handoff,
                declines=registration.accepts_declines,
                max_message_bytes=registration.max_message_bytes,
                children=children,
            )
            stream.on_cancel = runner.cancel  # the server's push; heartbeats are the fallback
            stream.start()
            finish = asyncio.Event()
            broker_url = self.broker_url or registration.broker_url
            consumers = [
                QueueConsumer(
                    StepTaskBroker(
                        broker_url,
                        stream=registration.stream_prefix + queue,
                        consumer_group=registration.consumer_group,
                        consumer_name=self.worker_id,
                        free_slots=lambda: self.concurrency - runner.in_flight,
                    ),
                    task_name=registration.task_name,
                    run_attempt=runner.run,
                    executor=executor,
                    concurrency=self.concurrency,
                    finish_event=finish,
                )
                for queue in self.queues
            ]
            tasks = [asyncio.create_task(c.run()) for c in consumers]
            interval = from_duration(registration.heartbeat_interval) or DEFAULT_HEARTBEAT_INTERVAL
            tasks.append(asyncio.create_task(self._heartbeat(runner, stream, interval)))
            self._log.info(
                "worker_started",
                server=self.server,
                queues=self.queues,
                handlers=sorted(self.handlers),
                concurrency=self.concurrency,
                heartbeat_interval=interval,
            )
            failure = await self._wait_for_stop(tasks[:-1])

            self._log.info("worker_draining", in_flight=runner.in_flight)
            runner.stop_handoffs()
            finish.set()
            try:
                async with asyncio.timeout(self.drain_timeout):
                    await asyncio.gather(*tasks[:-1], return_exceptions=True)  # receivers
                    await runner.wait_idle()
                self._log.info("worker_stopped")
            except TimeoutError:
                # A handler that does not return, or a result the server never answers: the
                # worker still stops, and the leases of what it leaves end on the server.
                self._log.warning(
                    "worker_drain_timed_out",
                    drain_timeout=self.drain_timeout,
                    in_flight=runner.in_flight,
                )
            if failure is not None:
                raise failure
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if stream is not None:
                await stream.close()
            await children.close()
            await channel.close()
            executor.shutdown(wait=False, cancel_futures=True)

    async def _wait_for_stop(self, consumers: list[asyncio.Task[None]]) -> BaseException | None:
        """Waits for `stop()`, or for a queue consumer to fail (a bug or a fatal Redis
        error such as a refused password): then the worker drains and raises it."""
        assert self._stop_event is not None
        stop = asyncio.create_task(self._stop_event.wait())
        try:
            await asyncio.wait([stop, *consumers], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        for consumer in consumers:
            if consumer.done() and not consumer.cancelled() and consumer.exception():
                self._log.error("queue_consumer_failed", exc_info=consumer.exception())
                return consumer.exception()
        return None

    async def _register(
        self, channel: grpc.aio.Channel
    ) -> worker_service_pb2.RegisterWorkerResponse | None:
        metadata = self._metadata or None
        if self.register_workflows:
            workflows = workflow_service_pb2_grpc.WorkflowServiceStub(channel)
            for workflow in self.workflows:
                registered = await self._until_ready(
                    f"register workflow {workflow.name}",
                    functools.partial(
                        workflows.RegisterWorkflow,
                        workflow_service_pb2.RegisterWorkflowRequest(
                            definition=workflow.definition()
                        ),
                        metadata=metadata,
                        timeout=10,
                    ),
                )
                if registered is None:
                    return None
                self._log.info(
                    "workflow_registered",
                    workflow=workflow.name,
                    version=registered.workflow.version,
                    created=registered.created,
                )
        workers = worker_service_pb2_grpc.WorkerServiceStub(channel)
        request = worker_service_pb2.RegisterWorkerRequest(
            worker_id=self.worker_id,
            queues=self.queues,
            handlers=sorted(self.handlers),
            concurrency=self.concurrency,
            labels={
                "host": socket.gethostname(),
                "pid": str(os.getpid()),
                "sdk": f"squidmesh-python/{SDK_VERSION}",
                "python": platform.python_version(),
            },
        )
        return await self._until_ready(
            "register worker",
            lambda: workers.RegisterWorker(request, metadata=metadata, timeout=10),
        )

    async def _until_ready(self, what: str, call: Callable[[], Awaitable[T]]) -> T | None:
        """Calls until the server answers (retrying while it is unavailable); None when the
        worker is stopped first. Other errors (invalid definition...) are raised."""
        assert self._stop_event is not None
        backoff = 0.1
        while not self._stop_event.is_set():
            try:
                return await call()
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in _RETRYABLE_CODES:
                    raise
                self._log.warning(
                    "server_unavailable", action=what, code=exc.code().name, retry_in=backoff
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_event.wait(), timeout=backoff)
            backoff = min(backoff * 2, 2.0)
        return None

    async def _heartbeat(
        self, runner: AttemptRunner, stream: AttemptStream, interval: float
    ) -> None:
        """Heartbeats every `interval` (or a third of the shortest lease of the attempts
        running, if smaller): renews those leases and applies the cancellations in the answers
        (those the server pushes on the stream arrive sooner; these cover a push lost on a
        reconnect). An idle worker heartbeats too, with no attempts: the servers see it live
        (ListWorkers, ExplainRun) by its heartbeats."""
        while True:
            lease = runner.shortest_lease()
            period = min(interval, lease / 3) if lease else interval
            await asyncio.sleep(max(period, 0.05))
            attempts = runner.progress()
            try:
                ack = await stream.heartbeat(
                    worker_service_pb2.WorkerHeartbeat(worker_id=self.worker_id, attempts=attempts)
                )
            except AttemptStreamClosedError:
                return
            runner.cancel(ack.cancel_attempt_ids, "cancel requested")
            runner.cancel(ack.lost_attempt_ids, "lease lost")


def _merge_handlers(workflows: Sequence[Workflow]) -> dict[str, Handler]:
    handlers: dict[str, Handler] = {}
    for workflow in workflows:
        for name, handler in workflow.handlers.items():
            existing = handlers.get(name)
            if existing is not None and existing.fn is not handler.fn:
                raise ValueError(f"two different functions are registered as handler {name!r}")
            handlers[name] = handler
    return handlers


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
