"""Readable text of what explains a run and who acts on it: `runs explain` (blockers and next
actions), `runs history` (commands and events, one row each) and `workers list`. Times
relative to `now` ("3m 04s ago", "in 12.0 s") where what matters is how long."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from google.protobuf import timestamp_pb2

from squidmesh.cli.output import Cell, Table
from squidmesh.cli.text import (
    MAX_VALUE,
    _describe,
    _local,
    _pairs,
    _status,
    _time,
    _without_tracebacks,
    duration,
    enum_name,
)
from squidmesh.client import run_status_name
from squidmesh.v1 import (
    diagnosis_pb2,
    history_pb2,
    run_pb2,
    run_service_pb2,
    worker_service_pb2,
)
from squidmesh.values import struct_to_dict

MAX_WHAT = 80  # characters of an event's description in the history table
_TERMINAL_STYLES = {
    "RUN_COMPLETED": "bold green",
    "RUN_FAILED": "bold red",
    "RUN_CANCELLED": "bold yellow",
}
_OUTCOME_STYLES = {"applied": "green", "duplicate": "dim", "refused": "red"}


def relative(ts: timestamp_pb2.Timestamp, now: datetime) -> str:
    """ "3m 04s ago", "in 12.0 s", or "-" for an unset time."""
    if not ts.seconds and not ts.nanos:
        return "-"
    seconds = (_local(ts) - now).total_seconds()
    return f"in {duration(seconds)}" if seconds > 0 else f"{duration(-seconds)} ago"


# --- runs explain ------------------------------------------------------------------------------


def explain_lines(
    run_id: str, explained: run_service_pb2.ExplainRunResponse, now: datetime
) -> list[tuple[str, str]]:
    """The explanation as (line, style) pairs: the run's status and summary, each blocker with
    its times, message and evidence, then the next actions, allowed or not and why."""
    status = run_status_name(explained.status)
    age = ""
    if explained.HasField("status_age"):
        age = f" for {duration(explained.status_age.ToNanoseconds() / 1e9)}"
    lines = [
        (f"run          {run_id}", ""),
        (f"status       {status}{age}", _status(status)[1]),
        (f"summary      {explained.summary}", "bold"),
    ]
    if explained.blockers:
        lines += [("", ""), ("blockers", "bold")]
    for blocker in explained.blockers:
        lines += _blocker_lines(blocker, now)
    if explained.next_actions:
        lines += [("", ""), ("next actions", "bold")]
        width = max(len(_action(a)) for a in explained.next_actions)
        for action in explained.next_actions:
            verdict = "allowed" if action.allowed else "not allowed"
            if not action.allowed and action.reason:
                verdict += f": {action.reason}"
            style = "green" if action.allowed else "dim"
            lines.append((f"  {_action(action):<{width}}  {verdict}", style))
    return lines


def _blocker_lines(blocker: diagnosis_pb2.Blocker, now: datetime) -> list[tuple[str, str]]:
    code = enum_name(diagnosis_pb2.BlockerCode, blocker.code, "BLOCKER_CODE_").upper()
    head = f"  {code}" + (f"  step {blocker.step}" if blocker.step else "")
    times = []
    if blocker.HasField("since"):
        times.append(f"since {relative(blocker.since, now)} ({_time(blocker.since)})")
    if blocker.HasField("until"):
        times.append(f"until {relative(blocker.until, now)} ({_time(blocker.until)})")
    if times:
        head += "  " + ", ".join(times)
    lines = [(head, _TERMINAL_STYLES.get(code, "yellow"))]
    if blocker.message:
        lines.append((f"    {blocker.message}", ""))
    evidence = _pairs(_without_tracebacks(struct_to_dict(blocker.evidence)))
    if evidence:
        lines.append((f"    evidence: {evidence}", "dim"))
    return lines


def _action(action: diagnosis_pb2.NextAction) -> str:
    name = enum_name(diagnosis_pb2.ActionType, action.action, "ACTION_TYPE_").replace("_", " ")
    return name + (f" {action.step}" if action.step else "")


# --- runs history ------------------------------------------------------------------------------


def history_table(entries: Iterable[history_pb2.HistoryEntry]) -> Table:
    """One row per command (who, key, outcome; a refusal with its reason) or event."""
    table = Table(["TIME", "KIND", "WHAT", "ACTOR", "KEY", "OUTCOME"])
    day: Any = None
    for entry in entries:
        if day is None:
            day = _local(entry.time).date()  # the first row shows the date, the rest the time
            when = _time(entry.time, ms=True)
        else:
            when = _time(entry.time, ms=True, day=day)
        if entry.HasField("command"):
            table.add(when, "command", *_command_cells(entry.command))
        elif entry.HasField("event"):
            table.add(when, "event", *_event_cells(entry.event))
    return table


def _command_cells(command: history_pb2.Command) -> list[Cell]:
    kind = enum_name(history_pb2.CommandType, command.type, "COMMAND_TYPE_")
    what = kind + (f" {command.step}" if command.step else "")
    data = struct_to_dict(command.data)
    if command.type == history_pb2.COMMAND_TYPE_EVENT and isinstance(data.get("event"), str):
        what += f" {data['event']}"  # the event's name (its id is the key)
    if command.comment:
        what += f": {command.comment}"
    outcome = enum_name(history_pb2.CommandOutcome, command.outcome, "COMMAND_OUTCOME_")
    shown = outcome
    if command.outcome == history_pb2.COMMAND_OUTCOME_REFUSED:
        reason = f" [{command.refusal_reason}]" if command.refusal_reason else ""
        shown = f"refused{reason}: {command.refusal_message}".rstrip(": ")
    return [
        _cut(what),
        command.actor or "-",
        command.idempotency_key or "-",
        (shown, _OUTCOME_STYLES.get(outcome, "")),
    ]


def _event_cells(event: run_pb2.RunEvent) -> list[Cell]:
    kind = enum_name(run_pb2.RunEventType, event.type, "RUN_EVENT_TYPE_")
    data = _without_tracebacks(struct_to_dict(event.data))
    actor = data.get("actor") if isinstance(data.get("actor"), str) else ""
    where = event.step + (f"#{event.attempt_number}" if event.attempt_number else "")
    what = " ".join(
        part for part in (f"[{event.sequence}] {kind}", where, _describe(kind, data)) if part
    )
    status = run_status_name(event.run_status) if event.run_status else ""
    return [_cut(what), actor or "-", "-", (f"run {status}" if status else "-", "dim")]


def _cut(text: str, limit: int = MAX_WHAT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- workers list ------------------------------------------------------------------------------


def workers_table(workers: Iterable[worker_service_pb2.WorkerInfo], now: datetime) -> Table:
    table = Table(
        ["WORKER", "HOST", "QUEUES", "HANDLERS", "SLOTS", "CONNECTED", "LAST HEARTBEAT", "STATE"]
    )
    for worker in workers:
        if worker.live:
            state: Cell = ("live", "green")
        else:
            gone = relative(worker.disconnect_time, now)
            state = (f"gone {gone}" if gone != "-" else "gone", "dim")
        table.add(
            worker.worker_id,
            worker.host or "-",
            ", ".join(worker.queues) or "-",
            _cut(", ".join(worker.handlers), MAX_VALUE) or "-",
            f"{worker.slots_used}/{worker.slots_total}",
            _time(worker.connect_time),
            relative(worker.last_heartbeat_time, now),
            state,
        )
    return table
