"""Typed clients of the workflow, run, schedule and worker APIs: `Client` (blocking) and
`AsyncClient` (asyncio, in `squidmesh.async_client`, importable from here too). Both build their
requests with the same functions (`squidmesh.requests`, `squidmesh.schedule_requests`), which
check their arguments before any call (TypeError/ValueError); errors of the calls are the gRPC
errors (`grpc.RpcError`, whose `.code()` tells NOT_FOUND, INVALID_ARGUMENT...). How calls are
repeated while the server is unavailable: `squidmesh.retries`.

    with Client("127.0.0.1:50051") as client:
        run = client.start_run("payment", {"amount": 12.5})
        final = client.wait_for_run(run.id, timeout=30)
        print(run_status_name(final.status), struct_to_dict(final.context))

        nightly = schedule_spec("0 3 * * *", time_zone="Europe/Paris", jitter=60)
        client.create_schedule("nightly-payment", "payment", nightly, {"amount": 1})
        for tick in client.preview_schedule("nightly-payment", count=3):
            print(tick.fire_time.ToDatetime())
"""

from __future__ import annotations

import time
from collections.abc import Generator, Iterator, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any

import grpc

from squidmesh import DEFAULT_ADDRESS
from squidmesh.async_client import AsyncClient
from squidmesh.requests import (
    TERMINAL_RUN_STATUSES,
    DurationLike,
    RunStatusLike,
    RunViewLike,
    WorkflowSource,
    _build,
    call_metadata,
    is_terminal,
    run_status,
    run_status_name,
    run_view,
)
from squidmesh.retries import CHANNEL_OPTIONS, keyed, status_code
from squidmesh.schedule_requests import (
    SCHEDULE_UPDATE_FIELDS,
    MissedTicksName,
    OverlapName,
    RepeatedTimeName,
    ScheduleStateLike,
    SkippedTimeName,
    _build_schedules,
    schedule_spec,
    schedule_state,
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

__all__ = [
    "SCHEDULE_UPDATE_FIELDS",
    "TERMINAL_RUN_STATUSES",
    "AsyncClient",
    "Client",
    "DurationLike",
    "MissedTicksName",
    "OverlapName",
    "RepeatedTimeName",
    "RunStatusLike",
    "RunViewLike",
    "ScheduleStateLike",
    "SkippedTimeName",
    "WorkflowSource",
    "is_terminal",
    "run_status",
    "run_status_name",
    "run_view",
    "schedule_spec",
    "schedule_state",
]


class Client:
    """Blocking client. `timeout` (seconds) applies to each unary call."""

    def __init__(
        self, address: str = DEFAULT_ADDRESS, *, token: str | None = None, timeout: float = 30.0
    ) -> None:
        self.address = address
        self._channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        self._workflows = workflow_service_pb2_grpc.WorkflowServiceStub(self._channel)
        self._runs = run_service_pb2_grpc.RunServiceStub(self._channel)
        self._workers = worker_service_pb2_grpc.WorkerServiceStub(self._channel)
        self._schedules = schedule_service_pb2_grpc.ScheduleServiceStub(self._channel)
        self._metadata = call_metadata(token)
        self._timeout = timeout

    # workflows

    def register_workflow(
        self, workflow: WorkflowSource | workflow_pb2.WorkflowDefinition
    ) -> workflow_pb2.Workflow:
        request = _build.register_workflow(workflow)
        return self._workflows.RegisterWorkflow(request, **self._opts()).workflow

    def get_workflow(self, name: str, version: int = 0) -> workflow_pb2.Workflow:
        request = workflow_service_pb2.GetWorkflowRequest(name=name, version=version)
        return self._workflows.GetWorkflow(request, **self._opts()).workflow

    def list_workflows(
        self, page_size: int = 50, page_token: str = ""
    ) -> workflow_service_pb2.ListWorkflowsResponse:
        request = workflow_service_pb2.ListWorkflowsRequest(
            page_size=page_size, page_token=page_token
        )
        return self._workflows.ListWorkflows(request, **self._opts())

    # runs

    def start_run(
        self,
        workflow: str,
        payload: Mapping[str, Any] | None = None,
        *,
        trigger: str = "",
        idempotency_key: str = "",
        parent_run_id: str = "",
        parent_step: str = "",
    ) -> run_pb2.Run:
        """Starts a run. With `parent_run_id` (and the `parent_step` whose handler starts it)
        it is a child run of that run, and `idempotency_key` is required: it is unique within
        the parent (a handler's `ctx.start_child_run` does this)."""
        request = _build.start_run(
            workflow, payload, trigger, idempotency_key, parent_run_id, parent_step
        )
        return keyed(
            lambda: self._runs.StartRun(request, **self._opts()), bool(idempotency_key)
        ).run

    def get_run(self, run_id: str) -> run_pb2.Run:
        request = run_service_pb2.GetRunRequest(run_id=run_id)
        return self._runs.GetRun(request, **self._opts()).run

    def list_runs(
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
        return self._runs.ListRuns(request, **self._opts())

    def iter_runs(
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
    ) -> Iterator[run_pb2.Run]:
        """Every matching run, newest first, following the page tokens."""
        token = ""
        while True:
            page = self.list_runs(
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
            yield from page.runs
            token = page.next_page_token
            if not token:
                return

    def watch_run(
        self, run_id: str, after_sequence: int | None = None, *, timeout: float | None = None
    ) -> Generator[run_service_pb2.WatchRunResponse, None, None]:
        """The run's snapshot, then its events until it is terminal (see WatchRun). Close the
        generator to stop watching early."""
        call = self._runs.WatchRun(
            _build.watch_run(run_id, after_sequence), metadata=self._metadata, timeout=timeout
        )
        try:
            yield from call
        finally:
            call.cancel()

    def cancel_run(
        self, run_id: str, actor: str = "", reason: str = "", idempotency_key: str = ""
    ) -> run_pb2.Run:
        request = run_service_pb2.CancelRunRequest(
            run_id=run_id, actor=actor, reason=reason, idempotency_key=idempotency_key
        )
        return self._runs.CancelRun(request, **self._opts()).run

    def replay_run(
        self, run_id: str, allow_irreversible: bool = False, idempotency_key: str = ""
    ) -> run_pb2.Run:
        request = run_service_pb2.ReplayRunRequest(
            run_id=run_id, allow_irreversible=allow_irreversible, idempotency_key=idempotency_key
        )
        return keyed(
            lambda: self._runs.ReplayRun(request, **self._opts()), bool(idempotency_key)
        ).run

    def wait_for_run(self, run_id: str, timeout: float | None = None) -> run_pb2.Run:
        """Waits (watching) until the run is terminal and returns it. Raises TimeoutError.
        A watch broken by a server restart is resumed where it stopped."""
        deadline = None if timeout is None else time.monotonic() + timeout
        after: int | None = None
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"run {run_id} is not terminal after {timeout} s")
            try:
                for response in self.watch_run(run_id, after, timeout=remaining):
                    after = _build.sequence(response) or after
                    if _build.is_final(response):
                        return self.get_run(run_id)
                run = self.get_run(run_id)  # the stream ended: terminal already?
                if is_terminal(run.status):
                    return run
            except grpc.RpcError as exc:
                code = status_code(exc)
                if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise TimeoutError(f"run {run_id} is not terminal after {timeout} s") from exc
                if code != grpc.StatusCode.UNAVAILABLE:
                    raise
            time.sleep(0.2)

    # people in the loop

    def resume_run(
        self,
        run_id: str,
        *,
        actor: str,
        step: str = "",
        comment: str = "",
        idempotency_key: str = "",
    ) -> run_pb2.Run:
        """Resumes a run stopped at a pause step (`step` may be empty when it has one)."""
        request = _build.resume_run(run_id, step, actor, comment, idempotency_key)
        return keyed(
            lambda: self._runs.ResumeRun(request, **self._opts()), bool(idempotency_key)
        ).run

    def approve_step(
        self,
        run_id: str,
        *,
        actor: str,
        step: str = "",
        comment: str = "",
        payload: Mapping[str, Any] | None = None,
        idempotency_key: str = "",
    ) -> run_service_pb2.ApproveStepResponse:
        """One approval of a waiting approval step; the response says whether it decided the
        step (`decided`, `approvals` of `required_approvals`) and holds the run."""
        request = _build.approve_step(run_id, step, actor, comment, payload, idempotency_key)
        return keyed(lambda: self._runs.ApproveStep(request, **self._opts()), bool(idempotency_key))

    def reject_step(
        self,
        run_id: str,
        *,
        actor: str,
        step: str = "",
        comment: str = "",
        payload: Mapping[str, Any] | None = None,
        idempotency_key: str = "",
    ) -> run_pb2.Run:
        """Rejects a waiting approval step: the run follows its error transition."""
        request = _build.reject_step(run_id, step, actor, comment, payload, idempotency_key)
        return keyed(
            lambda: self._runs.RejectStep(request, **self._opts()), bool(idempotency_key)
        ).run

    def publish_event(
        self,
        name: str,
        correlation_key: str,
        payload: Mapping[str, Any] | None = None,
        *,
        event_id: str = "",
        actor: str = "",
    ) -> run_service_pb2.PublishEventResponse:
        """Publishes an event to the wait_event steps waiting for `name` and
        `correlation_key` (and to those that reach one later). Without an `event_id` the
        client chooses one, so that a repeated call publishes the event once."""
        request = _build.publish_event(name, correlation_key, payload, event_id, actor)
        return keyed(lambda: self._runs.PublishEvent(request, **self._opts()), True)

    # diagnosis

    def explain_run(self, run_id: str) -> run_service_pb2.ExplainRunResponse:
        """Why the run is where it is: blockers with evidence, and the next actions."""
        request = run_service_pb2.ExplainRunRequest(run_id=run_id)
        return self._runs.ExplainRun(request, **self._opts())

    def get_run_history(
        self, run_id: str, page_size: int = 100, page_token: str = ""
    ) -> run_service_pb2.GetRunHistoryResponse:
        """One page of the run's audit history (commands and events), oldest first."""
        request = run_service_pb2.GetRunHistoryRequest(
            run_id=run_id, page_size=page_size, page_token=page_token
        )
        return self._runs.GetRunHistory(request, **self._opts())

    def iter_run_history(
        self, run_id: str, page_size: int = 100
    ) -> Iterator[history_pb2.HistoryEntry]:
        """The run's whole audit history, oldest first, following the page tokens."""
        token = ""
        while True:
            page = self.get_run_history(run_id, page_size, token)
            yield from page.entries
            token = page.next_page_token
            if not token:
                return

    # workers

    def list_workers(
        self, queue: str = "", *, gone_within: DurationLike | None = None
    ) -> worker_service_pb2.ListWorkersResponse:
        """The live workers (of `queue`, if given), then those gone within `gone_within`
        (seconds or a timedelta; the server's default is an hour)."""
        request = _build.list_workers(queue, gone_within)
        return self._workers.ListWorkers(request, **self._opts())

    # schedules

    def create_schedule(
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
        """Creates a schedule that starts `workflow` (its `trigger`, default the first) with
        `payload` on `spec`: a cron expression evaluated in UTC, or a `schedule_spec(...)` (time
        zone, start/end, jitter, DST policies). Missed ticks within `catchup_window` (seconds or
        a timedelta; default one hour) follow `missed_ticks` ("skip", the default,
        "run_latest", "run_all" up to `max_catchup_runs`); a tick while the previous run is
        active follows `overlap` ("skip", the default, "buffer_one", "allow_all",
        "cancel_other"). Not repeated while UNAVAILABLE (see `squidmesh.retries`)."""
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
        return self._schedules.CreateSchedule(request, **self._opts()).schedule

    def get_schedule(self, schedule_id: str) -> schedule_pb2.Schedule:
        """The schedule with its next ticks, its latest decided ticks and its health."""
        request = schedule_service_pb2.GetScheduleRequest(schedule_id=schedule_id)
        return self._schedules.GetSchedule(request, **self._opts()).schedule

    def list_schedules(
        self,
        workflow: str = "",
        states: Sequence[ScheduleStateLike] | ScheduleStateLike = (),
        page_size: int = 50,
        page_token: str = "",
    ) -> schedule_service_pb2.ListSchedulesResponse:
        """One page of schedules by id, of `workflow` and in `states` ("active", "paused",
        "stopped") if given, with their next ticks and health."""
        request = _build_schedules.list_schedules(workflow, states, page_size, page_token)
        return self._schedules.ListSchedules(request, **self._opts())

    def iter_schedules(
        self,
        workflow: str = "",
        states: Sequence[ScheduleStateLike] | ScheduleStateLike = (),
        page_size: int = 50,
    ) -> Iterator[schedule_pb2.Schedule]:
        """Every matching schedule by id, following the page tokens."""
        token = ""
        while True:
            page = self.list_schedules(workflow, states, page_size, token)
            yield from page.schedules
            token = page.next_page_token
            if not token:
                return

    def update_schedule(
        self, schedule: schedule_pb2.Schedule, fields: Sequence[str] = (), *, etag: str = ""
    ) -> schedule_pb2.Schedule:
        """Changes the `fields` (`SCHEDULE_UPDATE_FIELDS`; none: all of them) of a schedule
        created by `create_schedule` to those of `schedule` (its id names it). With `etag`
        (e.g. that of the schedule as read), the update fails with ABORTED unless it is the
        schedule's current one."""
        request = _build_schedules.update_schedule(schedule, fields, etag)
        return self._schedules.UpdateSchedule(request, **self._opts()).schedule

    def delete_schedule(self, schedule_id: str, *, etag: str = "") -> None:
        """Deletes a schedule created by `create_schedule` (its decided ticks stay)."""
        request = schedule_service_pb2.DeleteScheduleRequest(schedule_id=schedule_id, etag=etag)
        self._schedules.DeleteSchedule(request, **self._opts())

    def pause_schedule(
        self, schedule_id: str, *, actor: str, note: str = ""
    ) -> schedule_pb2.Schedule:
        """No tick until resumed; `note` says why (shown while it is paused)."""
        request = _build_schedules.pause_or_resume(
            schedule_service_pb2.PauseScheduleRequest, schedule_id, actor, note
        )
        return self._schedules.PauseSchedule(request, **self._opts()).schedule

    def resume_schedule(
        self, schedule_id: str, *, actor: str, note: str = ""
    ) -> schedule_pb2.Schedule:
        """Ticks again from the first tick after now (those due while paused are not made up)."""
        request = _build_schedules.pause_or_resume(
            schedule_service_pb2.ResumeScheduleRequest, schedule_id, actor, note
        )
        return self._schedules.ResumeSchedule(request, **self._opts()).schedule

    def trigger_schedule(
        self, schedule_id: str, *, actor: str, idempotency_key: str = ""
    ) -> schedule_service_pb2.TriggerScheduleResponse:
        """Starts a run of the schedule now, whatever its state and overlap policy: the
        response holds the run and its tick. The same `idempotency_key` returns that run."""
        request = _build_schedules.trigger_schedule(schedule_id, actor, idempotency_key)
        return keyed(
            lambda: self._schedules.TriggerSchedule(request, **self._opts()),
            bool(idempotency_key),
        )

    def backfill_schedule(
        self, schedule_id: str, start_time: datetime, end_time: datetime, *, actor: str
    ) -> schedule_service_pb2.BackfillScheduleResponse:
        """Starts a run for each tick from `start_time` to `end_time` (inclusive, past; at most
        1000 ticks) not decided yet: the response lists every tick of the range as decided
        now or before, and how many runs this call `started`."""
        request = _build_schedules.backfill_schedule(schedule_id, start_time, end_time, actor)
        return self._schedules.BackfillSchedule(request, **self._opts())

    def preview_schedule(
        self,
        schedule_id: str = "",
        *,
        spec: str | schedule_pb2.ScheduleSpec | None = None,
        count: int = 5,
        after: datetime | None = None,
    ) -> list[schedule_pb2.Tick]:
        """The next `count` ticks (nominal and fire times) after `after` (default now) of a
        saved schedule, or of a `spec` saved nowhere (a cron expression or a
        `schedule_spec(...)`)."""
        request = _build_schedules.preview_schedule(schedule_id, spec, count, after)
        return list(self._schedules.PreviewSchedule(request, **self._opts()).ticks)

    # lifecycle

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _opts(self) -> dict[str, Any]:
        return {"metadata": self._metadata, "timeout": self._timeout}
