"""The one place where the server is wired: store, engine, dispatch, events, timers, API."""

from __future__ import annotations

import asyncio
import signal
from dataclasses import replace

import structlog
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from squidmesh.v1 import (
    run_service_pb2,
    run_service_pb2_grpc,
    schedule_service_pb2,
    schedule_service_pb2_grpc,
    worker_service_pb2,
    worker_service_pb2_grpc,
    workflow_service_pb2,
    workflow_service_pb2_grpc,
)

from server.api.decoding import DecodeErrors
from server.api.run_service import RunService
from server.api.schedule_service import ScheduleService
from server.api.worker_service import WorkerService
from server.api.workflow_service import WorkflowService
from server.dispatch.loss import RedisLossWatch
from server.dispatch.publisher import Publisher
from server.embedded import EmbeddedServices
from server.engine.commands import Engine, EngineConfig
from server.events.hub import EventHub
from server.events.notifier import Notifier
from server.listen import ListenError
from server.settings import Settings
from server.store.db import Database, libpq_url
from server.store.migrate import upgrade_async
from server.timers.loop import TimerLoop

log = structlog.get_logger("squidmesh.server")

SERVICE_NAMES = (
    workflow_service_pb2.DESCRIPTOR.services_by_name["WorkflowService"].full_name,
    run_service_pb2.DESCRIPTOR.services_by_name["RunService"].full_name,
    worker_service_pb2.DESCRIPTOR.services_by_name["WorkerService"].full_name,
    schedule_service_pb2.DESCRIPTOR.services_by_name["ScheduleService"].full_name,
)


class App:
    """A running server. `start()` returns once it accepts calls; `port` is the bound port."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.port = 0
        self._embedded: EmbeddedServices | None = None
        self._db: Database | None = None
        self._publisher: Publisher | None = None
        self._hub: EventHub | None = None
        self._worker_service: WorkerService | None = None
        self._notifier: Notifier | None = None
        self._timers: TimerLoop | None = None
        self._redis_watch: RedisLossWatch | None = None
        self._server: aio.Server | None = None

    async def start(self) -> None:
        settings = self.settings
        if not settings.database_url or not settings.redis_url:
            self._embedded = EmbeddedServices(settings.data_dir)
            urls = await asyncio.to_thread(self._embedded.start)
            settings = replace(
                settings,
                database_url=settings.database_url or urls.database_url,
                redis_url=settings.redis_url or urls.redis_url,
            )
            self.settings = settings
        log.info("settings", **settings.masked())
        await upgrade_async(settings.database_url)

        self._db = Database(settings.database_url, settings.db_pool_size)
        await self._db.open()
        self._publisher = Publisher(settings.redis_url, settings.stream_prefix)
        self._notifier = Notifier(libpq_url(settings.database_url))
        self._notifier.start()
        engine = Engine(
            self._db,
            self._publisher.publish,
            self._notifier,
            EngineConfig(
                heartbeat_timeout_ms=settings.heartbeat_timeout_ms,
                max_payload_bytes=settings.max_payload_bytes,
                handoff=settings.handoff,
                dispatch_timeout_ms=settings.dispatch_timeout_ms,
                heartbeat_interval_ms=settings.heartbeat_interval_ms,
            ),
        )
        self._hub = EventHub(libpq_url(settings.database_url))
        await self._hub.start()
        self._timers = TimerLoop(
            engine,
            self._hub,
            dispatch_timeout_ms=settings.dispatch_timeout_ms,
            reconcile_interval_ms=settings.reconcile_interval_ms,
            lease_grace_ms=settings.heartbeat_timeout_ms,
        )
        self._timers.start()
        self._redis_watch = RedisLossWatch(
            settings.redis_url,
            settings.stream_prefix,
            engine.republish_unclaimed,
            settings.reconcile_interval_ms / 1000,
        )
        self._redis_watch.start()

        server = aio.server(
            interceptors=[DecodeErrors()],
            options=[
                # Fail rather than silently share the port with another server.
                ("grpc.so_reuseport", 0),
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
                ("grpc.max_receive_message_length", max_message_bytes(settings)),
                # Calls that arrived but that the event loop has not taken up yet. Past the
                # soft limit (grpc's default: 1,000) grpc cancels new ones at random, so a
                # client starting 2,000 runs at once saw some fail with CANCELLED; they are
                # cheap to hold, and StartRuns that wait together are written together.
                ("grpc.server.max_pending_requests", 20_000),
                ("grpc.server.max_pending_requests_hard_limit", 40_000),
            ],
        )
        workflow_service_pb2_grpc.add_WorkflowServiceServicer_to_server(
            WorkflowService(engine), server
        )
        run_service_pb2_grpc.add_RunServiceServicer_to_server(
            RunService(engine, self._db, self._hub, settings.watch_keepalive_ms / 1000), server
        )
        schedule_service_pb2_grpc.add_ScheduleServiceServicer_to_server(
            ScheduleService(engine), server
        )
        worker_service = WorkerService(
            engine,
            settings.worker_broker_url or settings.redis_url,
            settings.stream_prefix,
            settings.heartbeat_interval_ms,
            max_message_bytes(settings),
        )
        self._hub.on_stop = worker_service.stop_attempts
        self._worker_service = worker_service
        worker_service_pb2_grpc.add_WorkerServiceServicer_to_server(worker_service, server)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        try:
            self.port = server.add_insecure_port(settings.address)
        except RuntimeError:  # grpc's says only "failed to bind"; it logged the cause
            self.port = 0
        if self.port == 0:  # taken since the CLI checked, or not an address of this host
            raise ListenError(f"cannot listen on {settings.address}")
        await server.start()
        for name in ("", *SERVICE_NAMES):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._server = server
        host = settings.address.rpartition(":")[0]
        log.info("serving", address=f"{host}:{self.port}")

    async def stop(self, grace_s: float = 5.0) -> None:
        if self._worker_service is not None:
            self._worker_service.close_streams()  # they would hold the grace period up
        if self._server is not None:
            await self._server.stop(grace_s)
        if self._redis_watch is not None:
            await self._redis_watch.close()
        if self._timers is not None:
            await self._timers.close()
        if self._hub is not None:
            await self._hub.close()
        if self._notifier is not None:
            await self._notifier.close()
        if self._publisher is not None:
            await self._publisher.close()
        if self._db is not None:
            await self._db.close()
        if self._embedded is not None:
            await asyncio.to_thread(self._embedded.stop)
        log.info("stopped")

    async def wait(self) -> None:
        assert self._server is not None
        await self._server.wait_for_termination()


async def serve(settings: Settings) -> None:
    """Runs the server until SIGTERM or SIGINT, then stops it gracefully."""
    app = App(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Before start(): a signal while starting (embedded services, migrations) stops the server
    # once it has started, instead of killing it and orphaning the embedded Postgres and Redis.
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await app.start()
        await stop.wait()
        log.info("stopping")
    finally:
        await app.stop()  # also after a failed start: stops what had started


def max_message_bytes(settings: Settings) -> int:
    """The largest request the server reads: room for a payload or an output at its limit in
    protobuf form (a list of small numbers takes up to ~6 times its JSON size), and at least
    16 MiB."""
    return max(16 << 20, 8 * settings.max_payload_bytes)
