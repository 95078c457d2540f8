"""Readable terminal output of workflows, runs and run events for the CLI."""

from __future__ import annotations

import json
from typing import Any

from google.protobuf import timestamp_pb2
from squidmesh.v1 import run_pb2, workflow_pb2

from worker_sdk import struct_to_dict, value_to_python


def _name(enum_value_name: str, prefix: str) -> str:
    return enum_value_name.removeprefix(prefix).lower()


def run_status(status: int) -> str:
    return _name(run_pb2.RunStatus.Name(status), "RUN_STATUS_")  # type: ignore[arg-type]


def _time(ts: timestamp_pb2.Timestamp) -> str:
    if not ts.seconds and not ts.nanos:
        return "-"
    return ts.ToDatetime().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _compact(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), sort_keys=True)


def format_run_line(run: run_pb2.Run) -> str:
    line = f"{run.id}  {run.workflow} v{run.workflow_version}  {run_status(run.status)}"
    if run.current_steps:
        line += f"  at {','.join(run.current_steps)}"
    if run.HasField("error"):
        line += f"  error: {run.error.reason}: {run.error.message}"
    return line


def format_run(run: run_pb2.Run) -> str:
    lines = [
        f"run       {run.id}",
        f"workflow  {run.workflow} v{run.workflow_version} (trigger {run.trigger})",
        f"status    {run_status(run.status)}",
        f"created   {_time(run.create_time)}   ended {_time(run.end_time)}",
    ]
    if run.source_run_id:
        lines.append(f"replays   {run.source_run_id}")
    if run.HasField("error"):
        lines.append(f"error     {run.error.reason}: {run.error.message}")
        compensation = struct_to_dict(run.error.details).get("compensation")
        if compensation:
            undone = ", ".join(f"{c['step']} {c['status']}" for c in compensation)
            lines.append(f"compensated {undone}")
    lines.append("steps")
    for step in run.steps:
        status = _name(run_pb2.StepStatus.Name(step.status), "STEP_STATUS_")
        lines.append(f"  {step.name:<24} {status:<10} attempts={len(step.attempts)}")
        for attempt in step.attempts:
            a_status = _name(run_pb2.AttemptStatus.Name(attempt.status), "ATTEMPT_STATUS_")
            detail = ""
            if attempt.HasField("error"):
                detail = f" {attempt.error.reason}: {attempt.error.message}"
            elif attempt.HasField("progress"):
                detail = f" progress {_compact(struct_to_dict(attempt.progress))}"
            lines.append(
                f"    #{attempt.number} {a_status:<9} worker={attempt.worker_id or '-'}{detail}"
            )
    lines.append(f"context   {_compact(struct_to_dict(run.context))}")
    return "\n".join(lines)


def format_event(event: run_pb2.RunEvent) -> str:
    kind = _name(run_pb2.RunEventType.Name(event.type), "RUN_EVENT_TYPE_")
    where = ""
    if event.step:
        where = f" {event.step}"
        if event.attempt_number:
            where += f"#{event.attempt_number}"
    data = {
        k: v
        for k, v in _without_tracebacks(struct_to_dict(event.data)).items()
        if v not in ("", None)
    }
    extra = f" {_compact(data)}" if data else ""
    return f"[{event.sequence:>3}] {_time(event.time)} {kind:<18}{where}{extra}".rstrip()


def _without_tracebacks(data: Any) -> Any:
    """Event data for reading: tracebacks (in error details) are left to --json and GetRun."""
    if isinstance(data, dict):
        return {k: _without_tracebacks(v) for k, v in data.items() if k != "traceback"}
    if isinstance(data, list):
        return [_without_tracebacks(v) for v in data]
    return data


def format_workflow(wf: workflow_pb2.Workflow) -> str:
    d = wf.definition
    lines = [f"{wf.name} v{wf.version}  {d.description}", "triggers"]
    for trigger in d.triggers:
        fields = ", ".join(f.name + ("*" if f.required else "") for f in trigger.payload)
        kind = f"cron {trigger.cron.expression}" if trigger.HasField("cron") else "manual"
        lines.append(f"  {trigger.name} ({kind}) payload: {fields or '-'}")
    lines.append("steps")
    for step in d.steps:
        kind = step.WhichOneof("kind") or "?"
        handler = (
            f" {step.task.handler} on {step.task.queue or 'default'}" if kind == "task" else ""
        )
        lines.append(f"  {step.name:<24} {kind}{handler}")
    if d.transitions:
        lines.append("transitions")
        for t in d.transitions:
            on = _name(workflow_pb2.Outcome.Name(t.on), "OUTCOME_") if t.on else "ok"
            cond = ""
            if t.HasField("condition"):
                op = _name(
                    workflow_pb2.ConditionOperator.Name(t.condition.operator),
                    "CONDITION_OPERATOR_",
                )
                value = value_to_python(t.condition.value)
                cond = f" when {t.condition.path} {op} {_compact(value)}"
            lines.append(f"  {t.from_step} --{on}--> {t.to}{cond}")
    return "\n".join(lines)
