"""RunService: thin proto ⇄ engine mapping."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, TypeAlias

import grpc
from google.protobuf import timestamp_pb2
from grpc import aio
from squidmesh.v1 import run_service_pb2 as pb
from squidmesh.v1 import run_service_pb2_grpc as pb_grpc
from squidmesh.values import struct_to_dict

from server.api import convert
from server.api.errors import check_request, handle_errors, log, to_status
from server.engine.commands import Engine
from server.engine.errors import DomainError, FieldViolation, InvalidArgument
from server.engine.views import EventView, RunView
from server.events.hub import EventHub
from server.events.watch import watch
from server.store.db import Database
from server.store.runs import RunFilter

Context: TypeAlias = aio.ServicerContext[Any, Any]


def _time(ts: timestamp_pb2.Timestamp, present: bool) -> datetime | None:
    return ts.ToDatetime(tzinfo=UTC) if present else None


class RunService(pb_grpc.RunServiceServicer):
    def __init__(self, engine: Engine, db: Database, hub: EventHub, keepalive_s: float) -> None:
        self._engine = engine
        self._db = db
        self._hub = hub
        self._keepalive_s = keepalive_s

    @handle_errors
    async def StartRun(self, request: pb.StartRunRequest, context: Context) -> pb.StartRunResponse:
        if not request.workflow:
            raise InvalidArgument(
                "workflow is required", [FieldViolation("workflow", "must not be empty")]
            )
        payload = struct_to_dict(request.payload)
        if request.parent_run_id or request.parent_step:
            if not request.parent_run_id:
                raise InvalidArgument(
                    "parent_step names a step of a parent run: parent_run_id is required",
                    [FieldViolation("parent_run_id", "is required with parent_step")],
                )
            start = self._engine.start_child_run(
                convert.parse_uuid(request.parent_run_id, "parent_run_id"),
                request.parent_step,
                request.workflow,
                request.trigger,
                payload,
                request.idempotency_key,
            )
        else:
            start = self._engine.start_run(
                request.workflow, request.trigger, payload, request.idempotency_key
            )
        # Shielded: a caller that gives up (its deadline) after the run was written must not
        # stop its first attempts being published (they would wait for the dispatch timeout).
        run, created = await asyncio.shield(start)
        return pb.StartRunResponse(run=convert.run(run), created=created)

    @handle_errors
    async def GetRun(self, request: pb.GetRunRequest, context: Context) -> pb.GetRunResponse:
        run = await self._engine.get_run(convert.parse_uuid(request.run_id, "run_id"))
        return pb.GetRunResponse(run=convert.run(run))

    @handle_errors
    async def ListRuns(self, request: pb.ListRunsRequest, context: Context) -> pb.ListRunsResponse:
        limit = convert.page_size(request.page_size)
        cursor = None
        if request.page_token:
            token = convert.decode_page_token(request.page_token, "t", "id")
            try:
                cursor = (datetime.fromisoformat(token["t"]), uuid.UUID(token["id"]))
            except ValueError:
                raise convert.invalid_page_token() from None
        where = RunFilter(
            workflow=request.workflow,
            statuses=tuple(
                convert.RUN_STATUS_FROM_PROTO[s]
                for s in request.statuses
                if s in convert.RUN_STATUS_FROM_PROTO
            ),
            trigger=request.trigger,
            created_after=_time(request.create_time_after, request.HasField("create_time_after")),
            created_before=_time(
                request.create_time_before, request.HasField("create_time_before")
            ),
            parent_run_id=(
                convert.parse_uuid(request.parent_run_id, "parent_run_id")
                if request.parent_run_id
                else None
            ),
            schedule_id=request.schedule_id,
        )
        full = request.view == pb.RUN_VIEW_FULL
        runs = await self._engine.list_runs(where, cursor, limit + 1, full=full)
        next_token = ""
        if len(runs) > limit:
            runs = runs[:limit]
            last = runs[-1]
            next_token = convert.encode_page_token(
                {"t": last.created_at.isoformat(), "id": str(last.id)}
            )
        return pb.ListRunsResponse(
            runs=[convert.run(r, full=full) for r in runs], next_page_token=next_token
        )

    async def WatchRun(
        self, request: pb.WatchRunRequest, context: Context
    ) -> AsyncIterator[pb.WatchRunResponse]:
        try:
            check_request(request)
            run_id = convert.parse_uuid(request.run_id, "run_id")
            after = request.after_sequence if request.HasField("after_sequence") else None
            if after is not None and after < 0:
                raise InvalidArgument(
                    "after_sequence must not be negative",
                    [FieldViolation("after_sequence", "must be >= 0")],
                )
            async for item in watch(
                self._engine, self._db, self._hub, run_id, after, self._keepalive_s
            ):
                if isinstance(item, RunView):
                    yield pb.WatchRunResponse(snapshot=convert.run(item))
                elif isinstance(item, EventView):
                    yield pb.WatchRunResponse(event=convert.event(item))
                else:
                    yield pb.WatchRunResponse(
                        keep_alive=pb.KeepAlive(time=convert.timestamp(datetime.now(UTC)))
                    )
        except DomainError as exc:
            await context.abort_with_status(to_status(exc))
        except Exception:
            log.exception("rpc_failed", method="WatchRun")
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")

    @handle_errors
    async def CancelRun(
        self, request: pb.CancelRunRequest, context: Context
    ) -> pb.CancelRunResponse:
        run = await self._engine.cancel_run(
            convert.parse_uuid(request.run_id, "run_id"),
            request.actor,
            request.reason,
            request.idempotency_key,
        )
        return pb.CancelRunResponse(run=convert.run(run))

    @handle_errors
    async def ReplayRun(
        self, request: pb.ReplayRunRequest, context: Context
    ) -> pb.ReplayRunResponse:
        run = await asyncio.shield(  # as StartRun
            self._engine.replay_run(
                convert.parse_uuid(request.run_id, "run_id"),
                request.allow_irreversible,
                request.idempotency_key,
            )
        )
        return pb.ReplayRunResponse(run=convert.run(run))

    @handle_errors
    async def ResumeRun(
        self, request: pb.ResumeRunRequest, context: Context
    ) -> pb.ResumeRunResponse:
        run = await self._engine.resume_run(
            convert.parse_uuid(request.run_id, "run_id"),
            request.step,
            request.actor,
            request.comment,
            request.idempotency_key,
        )
        return pb.ResumeRunResponse(run=convert.run(run))

    @handle_errors
    async def ApproveStep(
        self, request: pb.ApproveStepRequest, context: Context
    ) -> pb.ApproveStepResponse:
        approval = await self._engine.approve_step(
            convert.parse_uuid(request.run_id, "run_id"),
            request.step,
            request.actor,
            request.comment,
            struct_to_dict(request.payload),
            request.idempotency_key,
        )
        return pb.ApproveStepResponse(
            run=convert.run(approval.run),
            decided=approval.decided,
            approvals=approval.approvals,
            required_approvals=approval.required,
        )

    @handle_errors
    async def RejectStep(
        self, request: pb.RejectStepRequest, context: Context
    ) -> pb.RejectStepResponse:
        run = await self._engine.reject_step(
            convert.parse_uuid(request.run_id, "run_id"),
            request.step,
            request.actor,
            request.comment,
            struct_to_dict(request.payload),
            request.idempotency_key,
        )
        return pb.RejectStepResponse(run=convert.run(run))

    @handle_errors
    async def PublishEvent(
        self, request: pb.PublishEventRequest, context: Context
    ) -> pb.PublishEventResponse:
        problems = [
            FieldViolation(name, "must not be empty")
            for name, value in (
                ("name", request.name),
                ("correlation_key", request.correlation_key),
            )
            if not value
        ]
        if problems:
            raise InvalidArgument("an event needs a name and a correlation key", problems)
        published = await asyncio.shield(  # as StartRun: resolved waits must move on
            self._engine.publish_event(
                request.name,
                request.correlation_key,
                struct_to_dict(request.payload),
                request.event_id,
                request.actor,
            )
        )
        return pb.PublishEventResponse(
            event_id=published.event_id,
            created=published.created,
            resolved_run_ids=[str(r) for r in published.resolved_run_ids],
            publish_time=convert.timestamp(published.published_at),
        )

    @handle_errors
    async def GetRunHistory(
        self, request: pb.GetRunHistoryRequest, context: Context
    ) -> pb.GetRunHistoryResponse:
        limit = convert.page_size(request.page_size, default=100)
        after = (0, -1)  # before the first event, and before the start command
        if request.page_token:
            token = convert.decode_page_token(request.page_token, "seq", "command")
            try:
                after = (int(token["seq"]), int(token["command"]))
            except ValueError:
                raise convert.invalid_page_token() from None
        entries, following = await self._engine.run_history(
            convert.parse_uuid(request.run_id, "run_id"), after, limit
        )
        next_token = ""
        if following is not None:
            next_token = convert.encode_page_token(
                {"seq": str(following[0]), "command": str(following[1])}
            )
        return pb.GetRunHistoryResponse(
            entries=[convert.history_entry(e) for e in entries], next_page_token=next_token
        )

    @handle_errors
    async def ExplainRun(
        self, request: pb.ExplainRunRequest, context: Context
    ) -> pb.ExplainRunResponse:
        explanation = await self._engine.explain_run(convert.parse_uuid(request.run_id, "run_id"))
        return convert.explanation(explanation)
