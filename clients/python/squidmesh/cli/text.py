"""Readable text of workflows, runs and run events: table rows, summary lines, event lines.
Times are local, durations human ("41 ms", "1.2 s", "3m 04s")."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from datetime import date, datetime
from typing import Any

from google.protobuf import duration_pb2, timestamp_pb2

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
    "paused": "magenta",
    "waiting": "blue",
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
    "step_waiting": "magenta",
    "approval_voted": "green",
    "child_run_started": "cyan",
}


def _name(enum_value_name: str, prefix: str) -> str:
    return enum_value_name.removeprefix(prefix).lower()


def enum_name(enum: Any, number: int, prefix: str) -> str:
    """The short name of an enum value; a number this client's contract does not know yet (a
    newer server's) as `<number>`, so that it still reads."""
    try:
        return _name(enum.Name(number), prefix)
    except ValueError:
        return f"<{number}>"


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
    if run.parent_run_id:
        step = f" (step {run.parent_step})" if run.parent_step else ""
        lines.append(f"parent       {run.parent_run_id}{step}")
    if run.HasField("schedule"):
        origin = enum_name(run_pb2.ScheduleRunOrigin, run.schedule.origin, "SCHEDULE_RUN_ORIGIN_")
        lines.append(
            f"schedule     {run.schedule.schedule_id} ({origin}, tick "
            f"{_time(run.schedule.nominal_time)}, fired {_time(run.schedule.fire_time)})"
        )
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
            status = enum_name(run_pb2.StepStatus, step.status, "STEP_STATUS_")
            ended = _took(step.create_time, step.end_time)
            detail = _failure(step.error) if step.HasField("error") else _gate_detail(step)
            started = _time(step.create_time, ms=True, day=day)
            table.add(name, "-", _status(status), "-", started, ended, detail)
        for index, attempt in enumerate(step.attempts):
            status = enum_name(run_pb2.AttemptStatus, attempt.status, "ATTEMPT_STATUS_")
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


def _gate_detail(step: run_pb2.StepRun) -> str:
    """What decided a step without attempts, read from its output: an approval's decision, a
    pause's resume, a child run's end. Empty for other steps (their output is in the context)."""
    output = value_to_python(step.output) if step.HasField("output") else None
    if not isinstance(output, dict):
        return ""
    actors = output.get("actors")
    by = f" by {', '.join(map(str, actors))}" if isinstance(actors, list) and actors else ""
    if isinstance(output.get("decision"), str):
        return f"{output['decision']}{by}"
    if "resumed_at" in output:
        return f"resumed{by}"
    if isinstance(output.get("run_id"), str) and isinstance(output.get("status"), str):
        return f"child {output['run_id']} {output['status']}"
    return ""


def children_table(run: run_pb2.Run) -> Table:
    """The runs this run's handlers started."""
    table = Table(["CHILD RUN", "WORKFLOW", "STEP", "STATUS", "KEY"])
    for child in run.children:
        table.add(
            child.run_id,
            child.workflow,
            child.parent_step,
            _status(run_status_name(child.status) if child.status else "-"),
            child.key,
        )
    return table


def run_context(run: run_pb2.Run) -> str:
    return f"context      {_compact(struct_to_dict(run.context))}"


# --- events ------------------------------------------------------------------------------------


def event_line(event: run_pb2.RunEvent) -> tuple[str, str]:
    """`[seq] time type step#attempt what happened`, and its style."""
    kind = enum_name(run_pb2.RunEventType, event.type, "RUN_EVENT_TYPE_")
    where = event.step + (f"#{event.attempt_number}" if event.attempt_number else "")
    what = _describe(kind, _without_tracebacks(struct_to_dict(event.data)))
    line = f"[{event.sequence:>3}] {_time(event.time, ms=True)} {kind:<20} "
    line += "  ".join(part for part in (where, what) if part)
    return line.rstrip(), _EVENT_STYLES.get(kind, "")


def _describe(kind: str, data: dict[str, Any]) -> str:
    if kind in _GATE_EVENTS:
        return _GATE_EVENTS[kind](data)
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


def _step_waiting(data: dict[str, Any]) -> str:
    kind = data.get("kind")
    if kind == "pause":
        text = "paused until resumed"
    elif kind == "approval":
        required = data.get("required_approvals")
        many = f"{required} approvals" if isinstance(required, int) and required > 1 else ""
        text = f"waiting for {many or 'approval'}"
    elif kind == "event":
        text = f"waiting for event {data.get('event', '?')} key {data.get('correlation_key', '?')}"
    elif kind == "child":
        text = f"waiting for child run key {data.get('key', '?')}"
    else:
        return _pairs(data)
    if isinstance(data.get("deadline_ms"), int | float):
        text += f", for at most {duration(data['deadline_ms'] / 1000)}"
    return text


def _approval_voted(data: dict[str, Any]) -> str:
    text = f"approved by {data.get('actor', '?')}"
    approvals, required = data.get("approvals"), data.get("required_approvals")
    if isinstance(approvals, int) and isinstance(required, int):
        text += f" ({approvals} of {required})"
    return text + (f": {data['comment']}" if data.get("comment") else "")


def _child_run_started(data: dict[str, Any]) -> str:
    text = f"started child run {data.get('run_id', '?')}"
    details = [f"{k} {data[k]}" for k in ("workflow", "key") if data.get(k)]
    return text + (f" ({', '.join(details)})" if details else "")


_GATE_EVENTS: dict[str, Callable[[dict[str, Any]], str]] = {
    "step_waiting": _step_waiting,
    "approval_voted": _approval_voted,
    "child_run_started": _child_run_started,
}


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


def _gate_options(step: workflow_pb2.Step) -> str:
    """What a gate step of a definition waits for, and for how long at most."""
    kind = step.WhichOneof("kind")
    parts: list[str] = []
    deadline: duration_pb2.Duration | None = None
    if kind == "approval":
        gate = step.approval
        if gate.required_approvals > 1:
            parts.append(f"needs {gate.required_approvals} approvals")
        if gate.fields:
            names = ", ".join(f.name + ("*" if f.required else "") for f in gate.fields)
            parts.append(f"fields {names}")
        deadline = gate.deadline if gate.HasField("deadline") else None
    elif kind == "wait_event":
        parts.append(f"{step.wait_event.event} key {step.wait_event.correlation_key}")
        deadline = step.wait_event.deadline if step.wait_event.HasField("deadline") else None
    elif kind == "wait_child":
        parts.append(f"key {step.wait_child.key}")
        deadline = step.wait_child.deadline if step.wait_child.HasField("deadline") else None
    if deadline is not None:
        limit = f"within {duration(deadline.ToNanoseconds() / 1e9)}"
        if kind == "approval":
            action = enum_name(
                workflow_pb2.DeadlineAction, step.approval.on_deadline, "DEADLINE_ACTION_"
            )
            limit += f", then {'reject' if action == 'unspecified' else action}"
            if step.approval.on_deadline_step:
                limit += f" to {step.approval.on_deadline_step}"
        parts.append(limit)
    return "".join(f" {part}" for part in parts)


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
        handler = f" {step.task.handler}" if kind == "task" else _gate_options(step)
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
