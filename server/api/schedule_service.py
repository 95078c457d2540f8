"""ScheduleService: thin proto ⇄ engine mapping."""

from __future__ import annotations

import asyncio
from typing import Any, TypeAlias

from grpc import aio
from squidmesh.v1 import schedule_service_pb2 as pb
from squidmesh.v1 import schedule_service_pb2_grpc as pb_grpc

from server.api import convert
from server.api.errors import handle_errors
from server.api.schedules import (
    config_from_proto,
    decided_tick,
    instant,
    next_tick,
    schedule,
    spec_from_proto,
    states_from_proto,
)
from server.engine.commands import Engine
from server.engine.errors import FieldViolation, InvalidArgument
from server.engine.schedule_resources import MAX_PREVIEW, NEXT_TICKS

Context: TypeAlias = aio.ServicerContext[Any, Any]


class ScheduleService(pb_grpc.ScheduleServiceServicer):
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @handle_errors
    async def CreateSchedule(
        self, request: pb.CreateScheduleRequest, context: Context
    ) -> pb.CreateScheduleResponse:
        config = config_from_proto(
            request.schedule_id,
            request.workflow,
            request.trigger,
            request.payload,
            request.spec,
            request.catchup_window if request.HasField("catchup_window") else None,
            request.missed_tick_policy,
            request.max_catchup_runs,
            request.overlap_policy,
        )
        if request.paused and not request.actor:
            raise InvalidArgument(
                "a schedule created paused needs the actor who pauses it",
                [FieldViolation("actor", "is required with paused")],
            )
        view = await self._engine.create_schedule(config, request.actor if request.paused else None)
        return pb.CreateScheduleResponse(schedule=schedule(view))

    @handle_errors
    async def GetSchedule(
        self, request: pb.GetScheduleRequest, context: Context
    ) -> pb.GetScheduleResponse:
        view = await self._engine.get_schedule(request.schedule_id)
        return pb.GetScheduleResponse(schedule=schedule(view))

    @handle_errors
    async def ListSchedules(
        self, request: pb.ListSchedulesRequest, context: Context
    ) -> pb.ListSchedulesResponse:
        limit = convert.page_size(request.page_size)
        after = (
            convert.decode_page_token(request.page_token, "id")["id"] if request.page_token else ""
        )
        states = states_from_proto(list(request.states), "states")
        views = await self._engine.list_schedules(request.workflow, states, after, limit + 1)
        next_token = ""
        if len(views) > limit:
            views = views[:limit]
            next_token = convert.encode_page_token({"id": views[-1].stored.config.id})
        return pb.ListSchedulesResponse(
            schedules=[schedule(v) for v in views], next_page_token=next_token
        )

    @handle_errors
    async def UpdateSchedule(
        self, request: pb.UpdateScheduleRequest, context: Context
    ) -> pb.UpdateScheduleResponse:
        changed = request.schedule
        config = config_from_proto(
            changed.id,
            changed.workflow,
            changed.trigger,
            changed.payload,
            changed.spec,
            changed.catchup_window if changed.HasField("catchup_window") else None,
            changed.missed_tick_policy,
            changed.max_catchup_runs,
            changed.overlap_policy,
            where="schedule.",
        )
        view = await self._engine.update_schedule(
            changed.id, config, list(request.update_mask.paths), request.etag
        )
        return pb.UpdateScheduleResponse(schedule=schedule(view))

    @handle_errors
    async def DeleteSchedule(
        self, request: pb.DeleteScheduleRequest, context: Context
    ) -> pb.DeleteScheduleResponse:
        await self._engine.delete_schedule(request.schedule_id, request.etag)
        return pb.DeleteScheduleResponse()

    @handle_errors
    async def PauseSchedule(
        self, request: pb.PauseScheduleRequest, context: Context
    ) -> pb.PauseScheduleResponse:
        view = await self._engine.pause_schedule(request.schedule_id, request.actor, request.note)
        return pb.PauseScheduleResponse(schedule=schedule(view))

    @handle_errors
    async def ResumeSchedule(
        self, request: pb.ResumeScheduleRequest, context: Context
    ) -> pb.ResumeScheduleResponse:
        view = await self._engine.resume_schedule(request.schedule_id, request.actor, request.note)
        return pb.ResumeScheduleResponse(schedule=schedule(view))

    @handle_errors
    async def TriggerSchedule(
        self, request: pb.TriggerScheduleRequest, context: Context
    ) -> pb.TriggerScheduleResponse:
        # Shielded like StartRun: a caller that gives up must not stop the run's dispatch.
        triggered = await asyncio.shield(
            self._engine.trigger_schedule(
                request.schedule_id, request.actor, request.idempotency_key
            )
        )
        return pb.TriggerScheduleResponse(
            run=convert.run(triggered.run), tick=decided_tick(triggered.tick)
        )

    @handle_errors
    async def BackfillSchedule(
        self, request: pb.BackfillScheduleRequest, context: Context
    ) -> pb.BackfillScheduleResponse:
        start = instant(request.start_time, request.HasField("start_time"))
        end = instant(request.end_time, request.HasField("end_time"))
        if start is None or end is None:
            raise InvalidArgument(
                "a backfill needs a time range",
                [
                    FieldViolation(name, "is required")
                    for name, value in (("start_time", start), ("end_time", end))
                    if value is None
                ],
            )
        ticks, started = await asyncio.shield(
            self._engine.backfill_schedule(request.schedule_id, start, end, request.actor)
        )
        return pb.BackfillScheduleResponse(ticks=[decided_tick(t) for t in ticks], started=started)

    @handle_errors
    async def PreviewSchedule(
        self, request: pb.PreviewScheduleRequest, context: Context
    ) -> pb.PreviewScheduleResponse:
        if bool(request.schedule_id) == request.HasField("spec"):
            raise InvalidArgument(
                "preview either a saved schedule or a spec",
                [FieldViolation("schedule_id", "set exactly one of schedule_id and spec")],
            )
        if not 0 <= request.count <= MAX_PREVIEW:
            raise InvalidArgument(
                "invalid count",
                [FieldViolation("count", f"must be between 1 and {MAX_PREVIEW}")],
            )
        ticks = await self._engine.preview_schedule(
            request.schedule_id,
            spec_from_proto(request.spec) if request.HasField("spec") else None,
            request.count or NEXT_TICKS,
            instant(request.after, request.HasField("after")),
        )
        return pb.PreviewScheduleResponse(ticks=[next_tick(t) for t in ticks])
