"""`AsyncClient`: the asyncio twin of `squidmesh.client.Client`, with the same methods,
awaitable (and async iterators where `Client` has iterators)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any

import grpc

from squidmesh import DEFAULT_ADDRESS
from squidmesh.requests import (
    DurationLike,
    RunStatusLike,
    RunViewLike,
    WorkflowSource,
    _build,
    call_metadata,
    is_terminal,
)
from squidmesh.retries import CHANNEL_OPTIONS, keyed_async
from squidmesh.schedule_requests import (
    MissedTicksName,
    OverlapName,
    ScheduleStateLike,
    _build_schedules,
)
from squidmesh.v1 import (
    history_pb2,
    run_pb2,
    run_service_pb2,
    run_service_pb2_grpc,
    schedule_pb2,
    schedule_service_pb2,
    schedule_service_pb2_grpc,
    worker_service_pb2,
    worker_service_pb2_grpc,
    workflow_pb2,
    workflow_service_pb2,
    workflow_service_pb2_grpc,
)

__all__ = ["AsyncClient"]


class AsyncClient:
    """asyncio client with the same methods as `Client` (awaitable, async iterators)."""

    def __init__(
        self, address: str = DEFAULT_ADDRESS, *, token: str | None = None, timeout: float = 30.0
    ) -> None:
        self.address = address
        self._channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        self._workflows = workflow_service_pb2_grpc.WorkflowServiceStub(self._channel)
        self._runs = run_service_pb2_grpc.RunServiceStub(self._channel)
        self._workers = worker_service_pb2_grpc.WorkerServiceStub(self._channel)
        self._schedules = schedule_service_pb2_grpc.ScheduleServiceStub(self._channel)
        self._metadata = call_metadata(token)
        self._timeout = timeout

    # workflows

    async def register_workflow(
        self, workflow: WorkflowSource | workflow_pb2.WorkflowDefinition
    ) -> workflow_pb2.Workflow:
        request = _build.register_workflow(workflow)
        return (await self._workflows.RegisterWorkflow(request, **self._opts())).workflow

    async def get_workflow(self, name: str, version: int = 0) -> workflow_pb2.Workflow:
        request = workflow_service_pb2.GetWorkflowRequest(name=name, version=version)
        return (await self._workflows.GetWorkflow(request, **self._opts())).workflow

    async def list_workflows(
        self, page_size: int = 50, page_token: str = ""
    ) -> workflow_service_pb2.ListWorkflowsResponse:
        request = workflow_service_pb2.ListWorkflowsRequest(
            page_size=page_size, page_token=page_token
        )
        return await self._workflows.ListWorkflows(request, **self._opts())

    # runs

    async def start_run(
        self,
        workflow: str,
        payload: Mapping[str, Any] | None = None,
        *,
        trigger: str = "",
        idempotency_key: str = "",
        parent_run_id: str = "",
        parent_step: str = "",
    ) -> run_pb2.Run:
        """See `Client.start_run`."""
        request = _build.start_run(
            workflow, payload, trigger, idempotency_key, parent_run_id, parent_step
        )
        response = await keyed_async(
            lambda: self._runs.StartRun(request, **self._opts()), bool(idempotency_key)
        )
        return response.run

    async def get_run(self, run_id: str) -> run_pb2.Run:
        request = run_service_pb2.GetRunRequest(run_id=run_id)
        return (await self._runs.GetRun(request, **self._opts())).run

    async def list_runs(
        self,
        workflow: str = "",
        statuses: Sequence[RunStatusLike] | RunStatusLike = (),
        trigger: str = "",
        page_size: int = 50,
        page_token: str = "",
        *,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        view: RunViewLike = "basic",
        parent_run_id: str = "",
        schedule_id: str = "",
    ) -> run_service_pb2.ListRunsResponse:
        """One page of runs, newest first. `created_after` (inclusive) and `created_before`
        bound the creation time; the "basic" view omits payloads, contexts and error details,
        "full" includes them; `parent_run_id` lists the child runs of that run, `schedule_id` the
        runs that schedule started (its ticks, manual triggers, backfills, and their replays)."""
        request = _build.list_runs(
            workflow,
            statuses,
            trigger,
            page_size,
            page_token,
            created_after,
            created_before,
            view,
            parent_run_id,
            schedule_id,
        )
        return await self._runs.ListRuns(request, **self._opts())

    async def iter_runs(
        self,
        workflow: str = "",
        statuses: Sequence[RunStatusLike] | RunStatusLike = (),
        trigger: str = "",
        page_size: int = 50,
        *,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        view: RunViewLike = "basic",
        parent_run_id: str = "",
        schedule_id: str = "",
    ) -> AsyncIterator[run_pb2.Run]:
        """Every matching run, newest first, following the page tokens."""
        token = ""
        while True:
            page = await self.list_runs(
                workflow,
                statuses,
                trigger,
                page_size,
                token,
                created_after=created_after,
                created_before=created_before,
                view=view,
                parent_run_id=parent_run_id,
                schedule_id=schedule_id,
            )
            for run in page.runs:
                yield run
            token = page.next_page_token
            if not token:
                return

    async def watch_run(
        self, run_id: str, after_sequence: int | None = None
    ) -> AsyncIterator[run_service_pb2.WatchRunResponse]:
        """The run's snapshot, then its events until it is terminal (see WatchRun)."""
        call = self._runs.WatchRun(
            _build.watch_run(run_id, after_sequence), metadata=self._metadata
        )
        try:
            async for response in call:
                yield response
        finally:
            call.cancel()

    async def cancel_run(
        self, run_id: str, actor: str = "", reason: str = "", idempotency_key: str = ""
    ) -> run_pb2.Run:
        request = run_service_pb2.CancelRunRequest(
            run_id=run_id, actor=actor, reason=reason, idempotency_key=idempotency_key
        )
        return (await self._runs.CancelRun(request, **self._opts())).run

    async def replay_run(
        self, run_id: str, allow_irreversible: bool = False, idempotency_key: str = ""
    ) -> run_pb2.Run:
        request = run_service_pb2.ReplayRunRequest(
            run_id=run_id, allow_irreversible=allow_irreversible, idempotency_key=idempotency_key
        )
        response = await keyed_async(
            lambda: self._runs.ReplayRun(request, **self._opts()), bool(idempotency_key)
        )
        return response.run

    async def wait_for_run(
        self,
        run_id: str,
        timeout: float | None = None,  # noqa: ASYNC109 - the signature of Client.wait_for_run
    ) -> run_pb2.Run:
        """Waits (watching) until the run is terminal and returns it. Raises TimeoutError.
        A watch broken by a server restart is resumed where it stopped."""
        async with asyncio.timeout(timeout):
            after: int | None = None
            while True:
                try:
                    async for response in self.watch_run(run_id, after):
                        after = _build.sequence(response) or after
                        if _build.is_final(response):
                            return await self.get_run(run_id)
                    run = await self.get_run(run_id)  # the stream ended: terminal already?
                    if is_terminal(run.status):
                        return run
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.UNAVAILABLE:
                        raise
                await asyncio.sleep(0.2)

    # people in the loop

    async def resume_run(
        self,
        run_id: str,
        *,
        actor: str,
        step: str = "",
        comment: str = "",
        idempotency_key: str = "",
    ) -> run_pb2.Run:
        """See `Client.resume_run`."""
        request = _build.resume_run(run_id, step, actor, comment, idempotency_key)
        response = await keyed_async(
            lambda: self._runs.ResumeRun(request, **self._opts()), bool(idempotency_key)
        )
        return response.run

    async def approve_step(
        self,
        run_id: str,
        *,
        actor: str,
        step: str = "",
        comment: str = "",
        payload: Mapping[str, Any] | None = None,
        idempotency_key: str = "",
    ) -> run_service_pb2.ApproveStepResponse:
        """See `Client.approve_step`."""
        request = _build.approve_step(run_id, step, actor, comment, payload, idempotency_key)
        return await keyed_async(
            lambda: self._runs.ApproveStep(request, **self._opts()), bool(idempotency_key)
        )

    async def reject_step(
        self,
        run_id: str,
        *,
        actor: str,
        step: str = "",
        comment: str = "",
        payload: Mapping[str, Any] | None = None,
        idempotency_key: str = "",
    ) -> run_pb2.Run:
        """See `Client.reject_step`."""
        request = _build.reject_step(run_id, step, actor, comment, payload, idempotency_key)
        response = await keyed_async(
            lambda: self._runs.RejectStep(request, **self._opts()), bool(idempotency_key)
        )
        return response.run

    async def publish_event(
        self,
        name: str,
        correlation_key: str,
        payload: Mapping[str, Any] | None = None,
        *,
        event_id: str = "",
        actor: str = "",
    ) -> run_service_pb2.PublishEventResponse:
        """See `Client.publish_event`."""
        request = _build.publish_event(name, correlation_key, payload, event_id, actor)
        return await keyed_async(lambda: self._runs.PublishEvent(request, **self._opts()), True)

    # diagnosis

    async def explain_run(self, run_id: str) -> run_service_pb2.ExplainRunResponse:
        """See `Client.explain_run`."""
        request = run_service_pb2.ExplainRunRequest(run_id=run_id)
        return await self._runs.ExplainRun(request, **self._opts())

    async def get_run_history(
        self, run_id: str, page_size: int = 100, page_token: str = ""
    ) -> run_service_pb2.GetRunHistoryResponse:
        """See `Client.get_run_history`."""
        request = run_service_pb2.GetRunHistoryRequest(
            run_id=run_id, page_size=page_size, page_token=page_token
        )
        return await self._runs.GetRunHistory(request, **self._opts())

    async def iter_run_history(
        self, run_id: str, page_size: int = 100
    ) -> AsyncIterator[history_pb2.HistoryEntry]:
        """The run's whole audit history, oldest first, following the page tokens."""
        token = ""
        while True:
            page = await self.get_run_history(run_id, page_size, token)
            for entry in page.entries:
                yield entry
            token = page.next_page_token
            if not token:
                return

    # workers

    async def list_workers(
        self, queue: str = "", *, gone_within: DurationLike | None = None
    ) -> worker_service_pb2.ListWorkersResponse:
        """See `Client.list_workers`."""
        request = _build.list_workers(queue, gone_within)
        return await self._workers.ListWorkers(request, **self._opts())

    # schedules

    async def create_schedule(
        self,
        schedule_id: str,
        workflow: str,
        spec: str | schedule_pb2.ScheduleSpec,
        payload: Mapping[str, Any] | None = None,
        *,
        trigger: str = "",
        catchup_window: DurationLike | None = None,
        missed_ticks: MissedTicksName | None = None,
        max_catchup_runs: int = 0,
        overlap: OverlapName | None = None,
        paused: bool = False,
        actor: str = "",
    ) -> schedule_pb2.Schedule:
        """See `Client.create_schedule`."""
        request = _build_schedules.create_schedule(
            schedule_id,
            workflow,
            spec,
            trigger,
            payload,
            catchup_window,
            missed_ticks,
            max_catchup_runs,
            overlap,
            paused,
            actor,
        )
        return (await self._schedules.CreateSchedule(request, **self._opts())).schedule

    async def get_schedule(self, schedule_id: str) -> schedule_pb2.Schedule:
        """See `Client.get_schedule`."""
        request = schedule_service_pb2.GetScheduleRequest(schedule_id=schedule_id)
        return (await self._schedules.GetSchedule(request, **self._opts())).schedule

    async def list_schedules(
        self,
        workflow: str = "",
        states: Sequence[ScheduleStateLike] | ScheduleStateLike = (),
        page_size: int = 50,
        page_token: str = "",
    ) -> schedule_service_pb2.ListSchedulesResponse:
        """See `Client.list_schedules`."""
        request = _build_schedules.list_schedules(workflow, states, page_size, page_token)
        return await self._schedules.ListSchedules(request, **self._opts())

    async def iter_schedules(
        self,
        workflow: str = "",
        states: Sequence[ScheduleStateLike] | ScheduleStateLike = (),
        page_size: int = 50,
    ) -> AsyncIterator[schedule_pb2.Schedule]:
        """Every matching schedule by id, following the page tokens."""
        token = ""
        while True:
            page = await self.list_schedules(workflow, states, page_size, token)
            for schedule in page.schedules:
                yield schedule
            token = page.next_page_token
            if not token:
                return

    async def update_schedule(
        self, schedule: schedule_pb2.Schedule, fields: Sequence[str] = (), *, etag: str = ""
    ) -> schedule_pb2.Schedule:
        """See `Client.update_schedule`."""
        request = _build_schedules.update_schedule(schedule, fields, etag)
        return (await self._schedules.UpdateSchedule(request, **self._opts())).schedule

    async def delete_schedule(self, schedule_id: str, *, etag: str = "") -> None:
        """See `Client.delete_schedule`."""
        request = schedule_service_pb2.DeleteScheduleRequest(schedule_id=schedule_id, etag=etag)
        await self._schedules.DeleteSchedule(request, **self._opts())

    async def pause_schedule(
        self, schedule_id: str, *, actor: str, note: str = ""
    ) -> schedule_pb2.Schedule:
        """See `Client.pause_schedule`."""
        request = _build_schedules.pause_or_resume(
            schedule_service_pb2.PauseScheduleRequest, schedule_id, actor, note
        )
        return (await self._schedules.PauseSchedule(request, **self._opts())).schedule

    async def resume_schedule(
        self, schedule_id: str, *, actor: str, note: str = ""
    ) -> schedule_pb2.Schedule:
        """See `Client.resume_schedule`."""
        request = _build_schedules.pause_or_resume(
            schedule_service_pb2.ResumeScheduleRequest, schedule_id, actor, note
        )
        return (await self._schedules.ResumeSchedule(request, **self._opts())).schedule

    async def trigger_schedule(
        self, schedule_id: str, *, actor: str, idempotency_key: str = ""
    ) -> schedule_service_pb2.TriggerScheduleResponse:
        """See `Client.trigger_schedule`."""
        request = _build_schedules.trigger_schedule(schedule_id, actor, idempotency_key)
        return await keyed_async(
            lambda: self._schedules.TriggerSchedule(request, **self._opts()),
            bool(idempotency_key),
        )

    async def backfill_schedule(
        self, schedule_id: str, start_time: datetime, end_time: datetime, *, actor: str
    ) -> schedule_service_pb2.BackfillScheduleResponse:
        """See `Client.backfill_schedule`."""
        request = _build_schedules.backfill_schedule(schedule_id, start_time, end_time, actor)
        return await self._schedules.BackfillSchedule(request, **self._opts())

    async def preview_schedule(
        self,
        schedule_id: str = "",
        *,
        spec: str | schedule_pb2.ScheduleSpec | None = None,
        count: int = 5,
        after: datetime | None = None,
    ) -> list[schedule_pb2.Tick]:
        """See `Client.preview_schedule`."""
        request = _build_schedules.preview_schedule(schedule_id, spec, count, after)
        return list((await self._schedules.PreviewSchedule(request, **self._opts())).ticks)

    # lifecycle

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _opts(self) -> dict[str, Any]:
        return {"metadata": self._metadata, "timeout": self._timeout}
