"""The requests of the clients (`Client`, `AsyncClient`), built and checked before any call:
a bad argument is a TypeError or ValueError that names it, never a call the server refuses.
Also the names of the contract's enums, as the clients and the CLI take and show them."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2

from squidmesh.v1 import (
    run_pb2,
    run_service_pb2,
    worker_service_pb2,
    workflow_pb2,
    workflow_service_pb2,
)
from squidmesh.values import to_duration, to_struct

__all__ = [
    "TERMINAL_RUN_STATUSES",
    "DurationLike",
    "RunStatusLike",
    "RunViewLike",
    "WorkflowSource",
    "is_terminal",
    "run_status",
    "run_status_name",
    "run_view",
]

RunStatusLike = str | int
"""A run status: its enum value or its short name ("completed", "running"...)."""

RunViewLike = str | int
"""How much of each run `list_runs` returns: "basic" (the default: no payload, context or
error details), "full", or the `RunView` enum value."""

DurationLike = float | timedelta
"""A duration: seconds, or a `timedelta`."""

E = TypeVar("E", bound=int)

TERMINAL_RUN_STATUSES = frozenset(
    {run_pb2.RUN_STATUS_COMPLETED, run_pb2.RUN_STATUS_FAILED, run_pb2.RUN_STATUS_CANCELLED}
)
_PREFIX = "RUN_STATUS_"


class WorkflowSource(Protocol):
    """What `register_workflow` takes besides a definition message: anything that builds one,
    such as `worker_sdk.Workflow`."""

    def definition(self) -> workflow_pb2.WorkflowDefinition: ...


def run_status_name(status: int) -> str:
    """RUN_STATUS_COMPLETED -> "completed"."""
    return run_pb2.RunStatus.Name(run_pb2.RunStatus.ValueType(status)).removeprefix(_PREFIX).lower()


def run_status(status: RunStatusLike) -> run_pb2.RunStatus.ValueType:
    """ "completed" (or "RUN_STATUS_COMPLETED", or the number) -> RUN_STATUS_COMPLETED.
    Raises ValueError, listing the valid names, for anything else."""
    return run_pb2.RunStatus.ValueType(_enum_value(run_pb2.RunStatus, _PREFIX, "status", status))


def run_view(view: RunViewLike) -> run_service_pb2.RunView.ValueType:
    """ "basic"/"full" (or "RUN_VIEW_FULL", or the number) -> the `RunView` value."""
    return run_service_pb2.RunView.ValueType(
        _enum_value(run_service_pb2.RunView, "RUN_VIEW_", "view", view)
    )


def _enum_value(enum: Any, prefix: str, what: str, value: str | int) -> int:
    """The number of an enum value given by short name, full name or number (not UNSPECIFIED:
    a filter or a view by that name would mean nothing)."""
    known = {name: int(number) for name, number in enum.items() if number}
    if isinstance(value, str):
        name = value.upper() if value.upper().startswith(prefix) else prefix + value.upper()
        if name in known:
            return known[name]
    elif isinstance(value, int) and not isinstance(value, bool) and value in known.values():
        return value
    names = [name.removeprefix(prefix).lower() for name in known]
    raise ValueError(f"{what} {value!r} is not one of: {', '.join(names)}")


def _each(values: Sequence[str | int] | str | int, read: Callable[[str | int], E]) -> list[E]:
    """The enum values of a filter given one name or number, or several (a single name is not
    a sequence of letters)."""
    return [read(v) for v in ([values] if isinstance(values, str | int) else values)]


def is_terminal(status: int) -> bool:
    return status in TERMINAL_RUN_STATUSES


def _timestamp(name: str, when: datetime | None) -> timestamp_pb2.Timestamp | None:
    """A datetime as a Timestamp; a naive one is local time, as `datetime.timestamp()` reads it."""
    if when is None:
        return None
    if not isinstance(when, datetime):
        raise TypeError(f"{name} must be a datetime, not {type(when).__name__}")
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(when.astimezone(UTC))
    return stamp


def call_metadata(token: str | None) -> tuple[tuple[str, str], ...] | None:
    """The metadata of every call: the bearer token, if any."""
    return (("authorization", f"Bearer {token}"),) if token else None


def _duration(name: str, value: DurationLike | None) -> duration_pb2.Duration | None:
    if value is None:
        return None
    try:
        return to_duration(value)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{name}: {exc}") from None


def _required(name: str, value: str) -> str:
    """A string argument the call cannot do without (an actor, an event name)."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, not {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{name} is required")
    return value


def _payload(payload: Mapping[str, Any] | None) -> struct_pb2.Struct | None:
    """A decision's or an event's payload as a Struct; None: no payload at all."""
    return None if payload is None else to_struct(payload, where="payload")


class _build:  # noqa: N801 - a namespace of request builders shared by both clients
    @staticmethod
    def register_workflow(
        workflow: WorkflowSource | workflow_pb2.WorkflowDefinition,
    ) -> workflow_service_pb2.RegisterWorkflowRequest:
        if isinstance(workflow, workflow_pb2.WorkflowDefinition):
            definition = workflow
        elif callable(getattr(workflow, "definition", None)):
            definition = workflow.definition()
        else:
            raise TypeError(
                "register_workflow takes a Workflow or a WorkflowDefinition, "
                f"not {type(workflow).__name__}"
            )
        return workflow_service_pb2.RegisterWorkflowRequest(definition=definition)

    @staticmethod
    def start_run(
        workflow: str,
        payload: Mapping[str, Any] | None,
        trigger: str,
        idempotency_key: str,
        parent_run_id: str = "",
        parent_step: str = "",
    ) -> run_service_pb2.StartRunRequest:
        if parent_step and not parent_run_id:
            raise ValueError("parent_step needs parent_run_id")
        if parent_run_id and not idempotency_key:
            # The key is what makes a retried handler find its child instead of a second one.
            raise ValueError("a child run (parent_run_id) needs an idempotency_key")
        return run_service_pb2.StartRunRequest(
            workflow=workflow,
            trigger=trigger,
            payload=to_struct({} if payload is None else payload, where="payload"),
            idempotency_key=idempotency_key,
            parent_run_id=parent_run_id,
            parent_step=parent_step,
        )

    @staticmethod
    def list_runs(
        workflow: str,
        statuses: Sequence[RunStatusLike] | RunStatusLike,
        trigger: str,
        page_size: int,
        page_token: str,
        created_after: datetime | None,
        created_before: datetime | None,
        view: RunViewLike,
        parent_run_id: str = "",
        schedule_id: str = "",
    ) -> run_service_pb2.ListRunsRequest:
        return run_service_pb2.ListRunsRequest(
            workflow=workflow,
            statuses=_each(statuses, run_status),
            trigger=trigger,
            page_size=page_size,
            page_token=page_token,
            create_time_after=_timestamp("created_after", created_after),
            create_time_before=_timestamp("created_before", created_before),
            view=run_view(view),
            parent_run_id=parent_run_id,
            schedule_id=schedule_id,
        )

    @staticmethod
    def watch_run(run_id: str, after_sequence: int | None) -> run_service_pb2.WatchRunRequest:
        request = run_service_pb2.WatchRunRequest(run_id=run_id)
        if after_sequence is not None:
            request.after_sequence = after_sequence
        return request

    @staticmethod
    def resume_run(
        run_id: str, step: str, actor: str, comment: str, idempotency_key: str
    ) -> run_service_pb2.ResumeRunRequest:
        return run_service_pb2.ResumeRunRequest(
            run_id=run_id,
            step=step,
            actor=_required("actor", actor),
            comment=comment,
            idempotency_key=idempotency_key,
        )

    @staticmethod
    def approve_step(
        run_id: str,
        step: str,
        actor: str,
        comment: str,
        payload: Mapping[str, Any] | None,
        idempotency_key: str,
    ) -> run_service_pb2.ApproveStepRequest:
        return run_service_pb2.ApproveStepRequest(
            run_id=run_id,
            step=step,
            actor=_required("actor", actor),
            comment=comment,
            payload=_payload(payload),
            idempotency_key=idempotency_key,
        )

    @staticmethod
    def reject_step(
        run_id: str,
        step: str,
        actor: str,
        comment: str,
        payload: Mapping[str, Any] | None,
        idempotency_key: str,
    ) -> run_service_pb2.RejectStepRequest:
        return run_service_pb2.RejectStepRequest(
            run_id=run_id,
            step=step,
            actor=_required("actor", actor),
            comment=comment,
            payload=_payload(payload),
            idempotency_key=idempotency_key,
        )

    @staticmethod
    def publish_event(
        name: str,
        correlation_key: str,
        payload: Mapping[str, Any] | None,
        event_id: str,
        actor: str,
    ) -> run_service_pb2.PublishEventRequest:
        """An event id is chosen here when none is given: a repeat of the request (after
        UNAVAILABLE) is then the same publication, never a second event."""
        return run_service_pb2.PublishEventRequest(
            name=_required("name", name),
            correlation_key=_required("correlation_key", correlation_key),
            payload=_payload(payload),
            event_id=event_id or str(uuid.uuid4()),
            actor=actor,
        )

    @staticmethod
    def list_workers(
        queue: str, gone_within: DurationLike | None
    ) -> worker_service_pb2.ListWorkersRequest:
        return worker_service_pb2.ListWorkersRequest(
            queue=queue, gone_within=_duration("gone_within", gone_within)
        )

    @staticmethod
    def is_final(response: run_service_pb2.WatchRunResponse) -> bool:
        """Whether a watch message shows the run terminal."""
        kind = response.WhichOneof("message")
        if kind == "snapshot":
            return is_terminal(response.snapshot.status)
        if kind == "event":
            return is_terminal(response.event.run_status)
        return False

    @staticmethod
    def sequence(response: run_service_pb2.WatchRunResponse) -> int | None:
        """The sequence a watch message brings the reader to, if any."""
        kind = response.WhichOneof("message")
        if kind == "snapshot":
            return response.snapshot.last_sequence
        if kind == "event":
            return response.event.sequence
        return None
