"""Read models → v1 messages, and the small proto ⇄ JSON helpers the servicers share."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import datetime
from typing import Any

from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2
from squidmesh.v1 import (
    diagnosis_pb2,
    history_pb2,
    run_pb2,
    run_service_pb2,
    worker_service_pb2,
    workflow_pb2,
)
from squidmesh.values import to_value

from server.api.definitions import definition_to_proto
from server.engine.errors import FieldViolation, InvalidArgument
from server.engine.explanation import ActionType, Blocker, BlockerCode, Explanation, NextAction
from server.engine.model import (
    JSON,
    AttemptStatus,
    Failure,
    RunStatus,
    ScheduleOrigin,
    ScheduleRunOrigin,
    StepStatus,
    compensated_step,
)
from server.engine.views import (
    AttemptView,
    EventView,
    RunView,
    StepView,
    WorkerView,
    WorkflowVersion,
)
from server.store.commands import CommandRecord


def timestamp(dt: datetime | None) -> timestamp_pb2.Timestamp | None:
    if dt is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(dt)
    return ts


def struct(value: dict[str, JSON] | None) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    if value:
        s.update(value)
    return s


def parse_uuid(raw: str, field: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise InvalidArgument(
            f"{field} must be a UUID", [FieldViolation(field, f"{raw!r} is not a UUID")]
        ) from None


def workflow(version: WorkflowVersion) -> workflow_pb2.Workflow:
    return workflow_pb2.Workflow(
        name=version.name,
        version=version.version,
        definition=definition_to_proto(version.definition),
        content_hash=version.content_hash,
        create_time=timestamp(version.created_at),
    )


_RUN_STATUS = {s: getattr(run_pb2, f"RUN_STATUS_{s.name}") for s in RunStatus}
_STEP_STATUS = {s: getattr(run_pb2, f"STEP_STATUS_{s.name}") for s in StepStatus}
_ATTEMPT_STATUS = {s: getattr(run_pb2, f"ATTEMPT_STATUS_{s.name}") for s in AttemptStatus}
RUN_STATUS_FROM_PROTO = {v: k for k, v in _RUN_STATUS.items()}


def failure(f: Failure | None) -> run_pb2.Failure | None:
    if f is None:
        return None
    return run_pb2.Failure(
        reason=f.reason,
        type=f.type,
        message=f.message,
        details=struct(f.details) if f.details else None,
        step=f.step,
        attempt_number=f.attempt_number,
        non_retryable=f.non_retryable,
    )


def run(view: RunView, *, full: bool = True) -> run_pb2.Run:
    """The run as a message; without `full` (ListRuns' basic view, read without them) its
    payload and context are left out."""
    return run_pb2.Run(
        id=str(view.id),
        workflow=view.workflow_name,
        workflow_version=view.workflow_version,
        trigger=view.trigger,
        status=_RUN_STATUS[view.status],
        payload=struct(view.payload) if full else None,
        context=struct(view.context) if full else None,
        steps=[step(s) for s in view.steps],
        current_steps=view.current_steps,
        error=failure(view.error),
        idempotency_key=view.idempotency_key or "",
        source_run_id=str(view.source_run_id) if view.source_run_id else "",
        parent_run_id=str(view.parent_run_id) if view.parent_run_id else "",
        parent_step=view.parent_step or "",
        children=[
            run_pb2.ChildRun(
                run_id=str(c.run_id),
                workflow=c.workflow_name,
                key=c.key,
                parent_step=c.parent_step,
                status=_RUN_STATUS[c.status],
            )
            for c in view.children
        ],
        create_time=timestamp(view.created_at),
        start_time=timestamp(view.started_at),
        end_time=timestamp(view.ended_at),
        update_time=timestamp(view.updated_at),
        last_sequence=view.last_seq,
        schedule=schedule_origin(view.schedule),
    )


SCHEDULE_RUN_ORIGIN = {
    ScheduleRunOrigin.TICK: run_pb2.SCHEDULE_RUN_ORIGIN_TICK,
    ScheduleRunOrigin.MANUAL: run_pb2.SCHEDULE_RUN_ORIGIN_MANUAL,
    ScheduleRunOrigin.BACKFILL: run_pb2.SCHEDULE_RUN_ORIGIN_BACKFILL,
}


def schedule_origin(origin: ScheduleOrigin | None) -> run_pb2.ScheduleOrigin | None:
    if origin is None:
        return None
    return run_pb2.ScheduleOrigin(
        schedule_id=origin.schedule_id,
        nominal_time=timestamp(origin.nominal_at),
        fire_time=timestamp(origin.fired_at),
        origin=SCHEDULE_RUN_ORIGIN[origin.origin],
    )


def step(view: StepView) -> run_pb2.StepRun:
    # Outputs arrived as doubles; Postgres reads a large whole one back as an integer.
    return run_pb2.StepRun(
        name=view.name,
        status=_STEP_STATUS[view.status],
        attempts=[attempt(a) for a in view.attempts],
        output=to_value(view.output, strict=False) if view.output is not None else None,
        error=failure(view.error),
        create_time=timestamp(view.created_at),
        end_time=timestamp(view.ended_at),
        compensates=compensated_step(view.name) or "",
    )


def attempt(view: AttemptView) -> run_pb2.Attempt:
    return run_pb2.Attempt(
        id=str(view.id),
        number=view.number,
        status=_ATTEMPT_STATUS[view.status],
        worker_id=view.worker_id or "",
        create_time=timestamp(view.created_at),
        start_time=timestamp(view.started_at),
        end_time=timestamp(view.ended_at),
        output=to_value(view.output, strict=False) if view.output is not None else None,
        error=failure(view.error),
        progress=struct(view.progress) if view.progress is not None else None,
    )


def event(view: EventView) -> run_pb2.RunEvent:
    return run_pb2.RunEvent(
        sequence=view.seq,
        type=getattr(run_pb2, f"RUN_EVENT_TYPE_{view.type.upper()}"),
        time=timestamp(view.created_at),
        run_status=_RUN_STATUS[view.run_status],
        step=view.step_name or "",
        attempt_number=view.attempt_number or 0,
        data=struct(view.data),
    )


def encode_page_token(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode()


def decode_page_token(token: str, *keys: str) -> dict[str, str]:
    """The fields of a token `encode_page_token` made: an object with these keys, each a string
    (without NUL, which no query takes). Anything else is INVALID_ARGUMENT."""
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
    except ValueError:
        data = None
    if not (
        isinstance(data, dict)
        and set(data) == set(keys)
        and all(isinstance(value, str) and "\x00" not in value for value in data.values())
    ):
        raise invalid_page_token()
    return data


def invalid_page_token() -> InvalidArgument:
    return InvalidArgument(
        "page_token is not valid",
        [FieldViolation("page_token", "was not returned by a previous call")],
    )


def page_size(requested: int, default: int = 50, maximum: int = 1000) -> int:
    if requested < 0:
        raise InvalidArgument(
            "page_size must not be negative", [FieldViolation("page_size", "must be >= 0")]
        )
    return min(requested or default, maximum)


def worker(view: WorkerView) -> worker_service_pb2.WorkerInfo:
    return worker_service_pb2.WorkerInfo(
        worker_id=view.id,
        host=view.host,
        queues=view.queues,
        handlers=view.handlers,
        slots_used=view.slots_used,
        slots_total=view.slots_total,
        connect_time=timestamp(view.connected_at),
        last_heartbeat_time=timestamp(view.last_seen_at),
        live=view.live,
        disconnect_time=timestamp(view.gone_at),
        labels=view.labels,
    )


_BLOCKER_CODE = {c: getattr(diagnosis_pb2, f"BLOCKER_CODE_{c.name}") for c in BlockerCode}
_ACTION_TYPE = {a: getattr(diagnosis_pb2, f"ACTION_TYPE_{a.name}") for a in ActionType}


def explanation(view: Explanation) -> run_service_pb2.ExplainRunResponse:
    age = duration_pb2.Duration()
    age.FromTimedelta(view.status_age)
    return run_service_pb2.ExplainRunResponse(
        status=_RUN_STATUS[view.status],
        summary=view.summary,
        blockers=[blocker(b) for b in view.blockers],
        next_actions=[next_action(a) for a in view.next_actions],
        status_age=age,
    )


def blocker(view: Blocker) -> diagnosis_pb2.Blocker:
    return diagnosis_pb2.Blocker(
        code=_BLOCKER_CODE[view.code],
        step=view.step,
        since=timestamp(view.since),
        until=timestamp(view.until),
        message=view.message,
        evidence=struct(view.evidence),
    )


def next_action(view: NextAction) -> diagnosis_pb2.NextAction:
    return diagnosis_pb2.NextAction(
        action=_ACTION_TYPE[view.action], step=view.step, allowed=view.allowed, reason=view.reason
    )


_COMMAND_TYPES = {
    "start": history_pb2.COMMAND_TYPE_START,
    "cancel": history_pb2.COMMAND_TYPE_CANCEL,
    "replay": history_pb2.COMMAND_TYPE_REPLAY,
    "resume": history_pb2.COMMAND_TYPE_RESUME,
    "approve": history_pb2.COMMAND_TYPE_APPROVE,
    "reject": history_pb2.COMMAND_TYPE_REJECT,
    "event": history_pb2.COMMAND_TYPE_EVENT,
}
_COMMAND_OUTCOMES = {
    "applied": history_pb2.COMMAND_OUTCOME_APPLIED,
    "refused": history_pb2.COMMAND_OUTCOME_REFUSED,
    "duplicate": history_pb2.COMMAND_OUTCOME_DUPLICATE,
}


def history_entry(entry: EventView | CommandRecord) -> history_pb2.HistoryEntry:
    """A run event, or a recorded command, as an entry of the run's history."""
    if isinstance(entry, EventView):
        return history_pb2.HistoryEntry(time=timestamp(entry.created_at), event=event(entry))
    return history_pb2.HistoryEntry(
        time=timestamp(entry.created_at),
        command=history_pb2.Command(
            type=_COMMAND_TYPES[entry.type],
            actor=entry.actor,
            comment=entry.comment,
            idempotency_key=entry.idempotency_key,
            step=entry.step,
            outcome=_COMMAND_OUTCOMES[entry.outcome],
            refusal_reason=entry.refusal_reason,
            refusal_message=entry.refusal_message,
            data=struct(entry.data),
        ),
    )
