"""Readable text of workflows, runs and run events: table rows, summary lines, event lines.
Times are local, durations human ("41 ms", "1.2 s", "3m 04s")."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import date, datetime
from typing import Any

from google.protobuf import timestamp_pb2

from squidmesh.cli.output import Cell, Table
from squidmesh.client import run_status_name
from squidmesh.v1 import run_pb2, workflow_pb2
from squidmesh.values import struct_to_dict, value_to_python

MAX_VALUE = 200  # characters of one value in an event line
_STYLES = {
    "completed": "green",
    "succeeded": "green",
    "failed": "red",
    "cancelled": "yellow",
    "cancelling": "yellow",
    "compensating": "yellow",
    "retrying": "yellow",
    "running": "cyan",
}
_EVENT_STYLES = {
    "run_completed": "bold green",
    "step_completed": "green",
    "attempt_failed": "yellow",
    "attempt_declined": "yellow",
    "step_failed": "red",
    "run_failed": "bold red",
    "compensation_started": "red",
    "cancel_requested": "yellow",
    "run_cancelled": "bold yellow",
    "attempt_progress": "dim",
}


def _name(enum_value_name: str, prefix: str) -> str:
    return enum_value_name.removeprefix(prefix).lower()


def _status(name: str) -> Cell:
    return (name, _STYLES.get(name, ""))


def _time(ts: timestamp_pb2.Timestamp, *, ms: bool = False, day: date | None = None) -> str:
    """Local date and time; only the time of day when the date is `day`."""
    if not ts.seconds and not ts.nanos:
        return "-"
    local = _local(ts)
    text = f"{local:%H:%M:%S.%f}"[:-3] if ms else f"{local:%H:%M:%S}"
    return text if local.date() == day else f"{local:%Y-%m-%d} {text}"


def _local(ts: timestamp_pb2.Timestamp) -> datetime:
    return ts.ToDatetime(tzinfo=datetime.now().astimezone().tzinfo)


def _took(start: timestamp_pb2.Timestamp, end: timestamp_pb2.Timestamp) -> str:
    if not start.seconds or not end.seconds:
        return "-"
    return duration((end.ToNanoseconds() - start.ToNanoseconds()) / 1e9)


def duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours < 24 else f"{hours // 24}d {hours % 24}h"


def _compact(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), sort_keys=True)


def _failure(error: run_pb2.Failure) -> str:
    return f"{error.reason}: {error.message}"


# --- runs --------------------------------------------------------------------------------------


def runs_table(runs: Iterable[run_pb2.Run]) -> Table:
    table = Table(["RUN", "WORKFLOW", "TRIGGER", "STATUS", "CREATED", "TOOK", "DETAIL"])
    for run in runs:
        table.add(
            run.id,
            f"{run.workflow} v{run.workflow_version}",
            run.trigger,
            _status(run_status_name(run.status)),
            _time(run.create_time),
            _took(run.create_time, run.end_time),
            _run_detail(run),
        )
    return table


def _run_detail(run: run_pb2.Run) -> str:
    if run.HasField("error"):
        return _failure(run.error)
    return f"at {', '.join(run.current_steps)}" if run.current_steps else ""


def run_summary(run: run_pb2.Run) -> tuple[str, str]:
    """One line about a run (its id, workflow, status, time taken, error), and its style."""
    status = run_status_name(run.status)
    line = f"{run.id}  {run.workflow} v{run.workflow_version}  {status}"
    if run.end_time.seconds:
        line += f" in {_took(run.create_time, run.end_time)}"
    detail = _run_detail(run)
    return (f"{line}  {detail}" if detail else line), _STYLES.get(status, "")


def run_header(run: run_pb2.Run) -> list[str]:
    lines = [
        f"run          {run.id}",
        f"workflow     {run.workflow} v{run.workflow_version} (trigger {run.trigger})",
        f"status       {run_status_name(run.status)}"
        + (f" at {', '.join(run.current_steps)}" if run.current_steps else ""),
        f"created      {_time(run.create_time)}",
    ]
    if run.end_time.seconds:
        lines.append(f"ended        {_time(run.end_time)} ({_took(run.create_time, run.end_time)})")
    if run.idempotency_key:
        lines.append(f"idempotency  {run.idempotency_key}")
    if run.source_run_id:
        lines.append(f"replays      {run.source_run_id}")
    if run.HasField("error"):
        where = f" (step {run.error.step})" if run.error.step else ""
        lines.append(f"error        {_failure(run.error)}{where}")
        compensation = struct_to_dict(run.error.details).get("compensation")
        if isinstance(compensation, list) and compensation:
            undone = ", ".join(
                f"{c.get('step', '?')} {c.get('status', '?')}"
                for c in compensation
                if isinstance(c, dict)
            )
            lines.append(f"compensated  {undone}")
    return lines


def steps_table(run: run_pb2.Run) -> Table:
    """One row per attempt (the step's name on its first), or per step for those without
    attempts (waits, logs)."""
    table = Table(["STEP", "#", "STATUS", "WORKER", "STARTED", "TOOK", "DETAIL"])
    day = _local(run.create_time).date()  # the header shows it: the table shows times of day
    for step in run.steps:
        name = step.name + (f" (undoes {step.compensates})" if step.compensates else "")
        if not step.attempts:
            status = _name(run_pb2.StepStatus.Name(step.status), "STEP_STATUS_")
            ended = _took(step.create_time, step.end_time)
            detail = _failure(step.error) if step.HasField("error") else ""
            started = _time(step.create_time, ms=True, day=day)
            table.add(name, "-", _status(status), "-", started, ended, detail)
        for index, attempt in enumerate(step.attempts):
            status = _name(run_pb2.AttemptStatus.Name(attempt.status), "ATTEMPT_STATUS_")
            detail = ""
            if attempt.HasField("error"):
                detail = _failure(attempt.error)
            elif attempt.HasField("progress"):
                detail = f"progress {_pairs(struct_to_dict(attempt.progress))}"
            table.add(
                "" if index else name,
                str(attempt.number),
                _status(status),
                attempt.worker_id or "-",
                _time(attempt.start_time, ms=True, day=day),
                _took(attempt.start_time, attempt.end_time),
                detail,
            )
    return table


def run_context(run: run_pb2.Run) -> str:
    return f"context      {_compact(struct_to_dict(run.context))}"


# --- events ------------------------------------------------------------------------------------


def event_line(event: run_pb2.RunEvent) -> tuple[str, str]:
    """`[seq] time type step#attempt what happened`, and its style."""
    kind = _name(run_pb2.RunEventType.Name(event.type), "RUN_EVENT_TYPE_")
    where = event.step + (f"#{event.attempt_number}" if event.attempt_number else "")
    what = _describe(kind, _without_tracebacks(struct_to_dict(event.data)))
    line = f"[{event.sequence:>3}] {_time(event.time, ms=True)} {kind:<20} "
    line += "  ".join(part for part in (where, what) if part)
    return line.rstrip(), _EVENT_STYLES.get(kind, "")


def _describe(kind: str, data: dict[str, Any]) -> str:
    if kind == "attempt_progress":
        return _pairs(data.get("progress") or {})
    if kind == "attempt_declined":
        text = f"declined by worker {data.get('worker_id', '?')}"
        if data.get("handler"):
            text += f", which lacks handler {data['handler']}"
        if data.get("queue"):
            text += f" on queue {data['queue']}"
        if isinstance(data.get("retry_in_ms"), int | float):
            text += f"; offered again in {duration(data['retry_in_ms'] / 1000)}"
        return text
    error = data.pop("error", None)
    pairs = _pairs(data)
    if isinstance(error, Mapping):
        return f"{error.get('reason', 'error')}: {error.get('message', '')} {pairs}".rstrip()
    return pairs


def _pairs(data: Mapping[str, Any]) -> str:
    """key=value for each value that says something: strings as they are unless they hold
    spaces, other values as compact JSON, each cut at MAX_VALUE characters (--output json
    has them whole)."""
    parts = []
    for key, value in sorted(data.items()):
        if value in ("", None, [], {}):
            continue
        plain = isinstance(value, str) and not any(c.isspace() for c in value)
        shown = value if plain else _compact(value)
        if len(shown) > MAX_VALUE:
            shown = shown[: MAX_VALUE - 1] + "…"
        parts.append(f"{key}={shown}")
    return " ".join(parts)


def _without_tracebacks(data: Any) -> Any:
    """Event data for reading: tracebacks (in error details) are left to --output json and
    `runs get`."""
    if isinstance(data, dict):
        return {k: _without_tracebacks(v) for k, v in data.items() if k != "traceback"}
    if isinstance(data, list):
        return [_without_tracebacks(v) for v in data]
    return data


# --- workflows ---------------------------------------------------------------------------------


def workflows_table(workflows: Iterable[workflow_pb2.Workflow]) -> Table:
    table = Table(["WORKFLOW", "VERSION", "STEPS", "TRIGGERS", "REGISTERED", "DESCRIPTION"])
    for wf in workflows:
        table.add(
            wf.name,
            str(wf.version),
            str(len(wf.definition.steps)),
            ", ".join(t.name for t in wf.definition.triggers),
            _time(wf.create_time),
            wf.definition.description,
        )
    return table


def workflow_text(wf: workflow_pb2.Workflow) -> list[str]:
    d = wf.definition
    lines = [
        f"{wf.name} v{wf.version}  {d.description}".rstrip(),
        f"registered {_time(wf.create_time)}",
        "triggers",
    ]
    for trigger in d.triggers:
        fields = ", ".join(f.name + ("*" if f.required else "") for f in trigger.payload)
        kind = f"cron {trigger.cron.expression}" if trigger.HasField("cron") else "manual"
        lines.append(f"  {trigger.name} ({kind}) payload: {fields or '-'}")
    lines.append("steps")
    for step in d.steps:
        kind = step.WhichOneof("kind") or "?"
        handler = f" {step.task.handler}" if kind == "task" else ""
        if step.task.queue:
            handler += f" on queue {step.task.queue}"
        after = f" after {', '.join(step.after)}" if step.after else ""
        lines.append(f"  {step.name:<24} {kind}{handler}{after}")
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
                cond = (
                    f" when {t.condition.path} {op} {_compact(value_to_python(t.condition.value))}"
                )
            lines.append(f"  {t.from_step} --{on}--> {t.to}{cond}")
    return lines
