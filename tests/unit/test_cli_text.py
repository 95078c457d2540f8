"""What the CLI prints for people: event lines (progress and declines included), tables with a
header, plain when piped, and JSON with the proto's field names."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.protobuf import timestamp_pb2
from squidmesh.cli import text
from squidmesh.cli.output import Output, Table
from squidmesh.v1 import run_pb2, workflow_pb2
from squidmesh.values import to_struct, to_value

from worker_sdk import Field, Workflow

T0 = datetime(2026, 11, 21, 19, 6, 49, 826000, tzinfo=UTC)


def _ts(seconds_after_t0: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(T0 + timedelta(seconds=seconds_after_t0))
    return stamp


def _event(kind: str, data: dict[str, Any], step: str = "", attempt: int = 0) -> run_pb2.RunEvent:
    return run_pb2.RunEvent(
        sequence=7,
        type=run_pb2.RunEventType.Value(f"RUN_EVENT_TYPE_{kind.upper()}"),
        time=_ts(0),
        step=step,
        attempt_number=attempt,
        data=to_struct(data),
    )


def _what(line: str) -> str:
    """An event line without its sequence and time ("[  7] 2026-11-21 19:06:49.826 ")."""
    return line.split(" ", 5)[-1]


def test_progress_shows_its_values() -> None:
    line, style = text.event_line(
        _event("attempt_progress", {"progress": {"rows": 1200, "file": "a.csv"}}, "load", 2)
    )
    assert line.startswith("[  7] ")
    assert _what(line) == "attempt_progress     load#2  file=a.csv rows=1200"
    assert style == "dim"


def test_a_decline_names_the_worker_the_handler_and_the_queue() -> None:
    data = {"worker_id": "w-1", "handler": "shop.charge", "queue": "shop", "retry_in_ms": 400}
    line, style = text.event_line(_event("attempt_declined", data, "charge", 1))
    assert _what(line) == (
        "attempt_declined     charge#1  declined by worker w-1, which lacks handler shop.charge "
        "on queue shop; offered again in 400 ms"
    )
    assert style == "yellow"


def test_a_decline_with_partial_data_still_reads() -> None:
    line, _ = text.event_line(_event("attempt_declined", {"retry_in_ms": "soon"}, "charge", 1))
    assert _what(line) == "attempt_declined     charge#1  declined by worker ?"


def test_errors_read_as_reason_and_message_without_tracebacks() -> None:
    error = {
        "reason": "handler_error",
        "message": "provider busy",
        "details": {"traceback": "Traceback (most recent call last): ..."},
    }
    line, style = text.event_line(_event("step_failed", {"error": error, "retry": "x"}, "pay", 3))
    assert _what(line) == "step_failed          pay#3  handler_error: provider busy retry=x"
    assert "Traceback" not in line and style == "red"


def test_other_events_show_their_data_as_key_value_pairs() -> None:
    line, _ = text.event_line(
        _event("run_created", {"workflow": "payment", "workflow_version": 1, "note": "a b"})
    )
    assert _what(line) == 'run_created          note="a b" workflow=payment workflow_version=1'
    line, _ = text.event_line(_event("run_completed", {}))
    assert _what(line) == "run_completed"


def test_long_values_are_cut() -> None:
    line, _ = text.event_line(_event("step_completed", {"output": {"blob": "x" * 1000}}, "s", 1))
    assert len(line) < 300 and line.endswith("…")


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0.0414, "41 ms"), (1.24, "1.2 s"), (184, "3m 04s"), (7380, "2h 03m"), (97200, "1d 3h")],
)
def test_durations(seconds: float, shown: str) -> None:
    assert text.duration(seconds) == shown


def _runs() -> list[run_pb2.Run]:
    failed = run_pb2.Run(
        id="r-2",
        workflow="payment",
        workflow_version=3,
        trigger="manual",
        status=run_pb2.RUN_STATUS_FAILED,
        create_time=_ts(0),
        end_time=_ts(1.5),
        error=run_pb2.Failure(reason="handler_error", message="card declined"),
    )
    running = run_pb2.Run(
        id="r-1",
        workflow="payment",
        workflow_version=3,
        trigger="manual",
        status=run_pb2.RUN_STATUS_RUNNING,
        create_time=_ts(0),
        current_steps=["charge"],
    )
    return [failed, running]


def test_a_piped_table_is_plain_text_with_a_header(capsys: pytest.CaptureFixture[str]) -> None:
    Output("text").table(text.runs_table(_runs()))  # capsys: stdout is not a terminal
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["RUN", "WORKFLOW", "TRIGGER", "STATUS", "CREATED", "TOOK", "DETAIL"]
    assert lines[1].split()[:4] == ["r-2", "payment", "v3", "manual"]
    assert "failed" in lines[1] and "1.5 s" in lines[1]
    assert lines[1].endswith("handler_error: card declined")
    assert lines[2].endswith("at charge")
    assert "\x1b" not in "".join(lines)  # no colour codes in a pipe
    # Columns line up: each column starts at the same offset on every line.
    assert lines[0].index("STATUS") == lines[1].index("failed") == lines[2].index("running")


def test_json_uses_the_proto_field_names(capsys: pytest.CaptureFixture[str]) -> None:
    out = Output("json")
    out.message(_runs()[1])
    printed = json.loads(capsys.readouterr().out)
    assert printed["workflow_version"] == 3 and printed["current_steps"] == ["charge"]
    assert printed["create_time"] == "2026-11-21T19:06:49.826Z"
    assert printed["status"] == "RUN_STATUS_RUNNING"
    out.message_line(_runs()[0])
    out.message_line(_runs()[1])
    assert [json.loads(line)["id"] for line in capsys.readouterr().out.splitlines()] == [
        "r-2",
        "r-1",
    ]


def test_run_details_show_each_attempt(capsys: pytest.CaptureFixture[str]) -> None:
    run = _runs()[1]
    step = run.steps.add(name="charge", status=run_pb2.STEP_STATUS_RUNNING)
    step.attempts.add(
        number=1,
        status=run_pb2.ATTEMPT_STATUS_FAILED,
        worker_id="w-1",
        start_time=_ts(0.1),
        end_time=_ts(0.2),
        error=run_pb2.Failure(reason="handler_error", message="busy"),
    )
    step.attempts.add(
        number=2,
        status=run_pb2.ATTEMPT_STATUS_RUNNING,
        worker_id="w-2",
        start_time=_ts(0.5),
        progress=to_struct({"boxes": 2}),
    )
    run.steps.add(name="cool_off", status=run_pb2.STEP_STATUS_WAITING, create_time=_ts(0.3))
    Output("text").table(text.steps_table(run))
    header, first, second, wait = capsys.readouterr().out.splitlines()
    assert header.split() == ["STEP", "#", "STATUS", "WORKER", "STARTED", "TOOK", "DETAIL"]
    assert first.split()[:4] == ["charge", "1", "failed", "w-1"]
    assert first.endswith("100 ms  handler_error: busy")
    assert second.split()[:3] == ["2", "running", "w-2"]  # the step's name is on its first row
    assert second.endswith("progress boxes=2")
    assert wait.split()[:4] == ["cool_off", "-", "waiting", "-"]


def test_an_empty_list_is_still_a_header(capsys: pytest.CaptureFixture[str]) -> None:
    Output("text").table(Table(["RUN", "STATUS"]))
    assert capsys.readouterr().out == "RUN  STATUS\n"


@pytest.mark.parametrize(
    ("data", "shown"),
    [
        ({"kind": "pause"}, "paused until resumed"),
        ({"kind": "approval", "required_approvals": 1}, "waiting for approval"),
        (
            {"kind": "approval", "required_approvals": 2, "deadline_ms": 3_600_000},
            "waiting for 2 approvals, for at most 1h 00m",
        ),
        (
            {"kind": "event", "event": "payment.settled", "correlation_key": "order:7"},
            "waiting for event payment.settled key order:7",
        ),
        ({"kind": "child", "key": "ship:7"}, "waiting for child run key ship:7"),
        ({"kind": "other", "x": 1}, "kind=other x=1"),
    ],
)
def test_a_waiting_step_says_what_it_waits_for(data: dict[str, Any], shown: str) -> None:
    assert text._describe("step_waiting", data) == shown


def test_votes_and_child_runs_read_as_sentences() -> None:
    vote = {"actor": "ada", "comment": "fine", "approvals": 1, "required_approvals": 2}
    assert text._describe("approval_voted", vote) == "approved by ada (1 of 2): fine"
    assert text._describe("approval_voted", {"actor": "bob"}) == "approved by bob"
    child = {"run_id": "c-1", "workflow": "ship", "key": "ship:7"}
    assert text._describe("child_run_started", child) == (
        "started child run c-1 (workflow ship, key ship:7)"
    )


def test_an_event_type_this_client_does_not_know_still_reads() -> None:
    newer = run_pb2.RunEventType.ValueType(99)  # a newer server's type
    event = run_pb2.RunEvent(
        sequence=3, type=newer, time=_ts(0), step="s", data=to_struct({"a": 1})
    )
    line, style = text.event_line(event)
    assert _what(line) == "<99>                 s  a=1" and style == ""


def test_gate_steps_show_their_decision(capsys: pytest.CaptureFixture[str]) -> None:
    run = _runs()[1]
    decision = {"decision": "approved", "actors": ["ada", "bob"], "payload": {}}
    run.steps.add(
        name="sign_off",
        status=run_pb2.STEP_STATUS_COMPLETED,
        create_time=_ts(0.1),
        end_time=_ts(60.1),
        output=to_value(decision),
    )
    resumed = {"actors": ["ada"], "comments": [], "resumed_at": "2026-11-21T19:07:49Z"}
    run.steps.add(name="hold", status=run_pb2.STEP_STATUS_COMPLETED, output=to_value(resumed))
    child = {"run_id": "c-1", "workflow": "ship", "status": "completed", "context": {}}
    run.steps.add(name="shipped", status=run_pb2.STEP_STATUS_COMPLETED, output=to_value(child))
    run.steps.add(name="approve_2", status=run_pb2.STEP_STATUS_PAUSED, create_time=_ts(61))
    Output("text").table(text.steps_table(run))
    _, sign_off, hold, shipped, waiting = capsys.readouterr().out.splitlines()
    assert sign_off.split()[:3] == ["sign_off", "-", "completed"]
    assert sign_off.endswith("1m 00s  approved by ada, bob")
    assert hold.endswith("resumed by ada")
    assert shipped.endswith("child c-1 completed")
    assert waiting.split()[:3] == ["approve_2", "-", "paused"]


def test_a_child_run_names_its_parent_and_a_parent_its_children(
    capsys: pytest.CaptureFixture[str],
) -> None:
    child = run_pb2.Run(
        id="c-1", workflow="ship", create_time=_ts(0), parent_run_id="p-1", parent_step="fan_out"
    )
    assert "parent       p-1 (step fan_out)" in text.run_header(child)
    assert not any(line.startswith("parent") for line in text.run_header(_runs()[0]))
    parent = run_pb2.Run(id="p-1", workflow="order", create_time=_ts(0))
    parent.children.add(
        run_id="c-1",
        workflow="ship",
        key="ship:7",
        parent_step="fan_out",
        status=run_pb2.RUN_STATUS_RUNNING,
    )
    Output("text").table(text.children_table(parent))
    header, row = capsys.readouterr().out.splitlines()
    assert header.split() == ["CHILD", "RUN", "WORKFLOW", "STEP", "STATUS", "KEY"]
    assert row.split() == ["c-1", "ship", "fan_out", "running", "ship:7"]


def test_a_definition_shows_what_its_gates_wait_for() -> None:
    wf = Workflow("loan")
    wf.approval(
        "committee",
        required_approvals=2,
        fields=[Field("limit", "number", required=True), Field("note", "string")],
        deadline=timedelta(hours=48),
        on_deadline="route",
        on_deadline_step="escalate",
    )
    wf.approval("sign_off", deadline=60)
    wf.wait_event("settled", "payment.settled", "order:{order_id}", deadline=600)
    wf.wait_child("shipped", "ship:{order_id}")
    wf.pause("hold")
    registered = workflow_pb2.Workflow(name="loan", version=1, definition=wf.definition())
    steps = text.workflow_text(registered)[4:]
    assert [" ".join(line.split()) for line in steps] == [
        "committee approval needs 2 approvals fields limit*, note "
        "within 2d 0h, then route to escalate",
        "sign_off approval within 1m 00s, then reject",
        "settled wait_event payment.settled key order:{order_id} within 10m 00s",
        "shipped wait_child key ship:{order_id}",
        "hold pause",
    ]


def test_a_scheduled_run_names_its_schedule_tick_and_origin() -> None:
    run = run_pb2.Run(
        id="r-1",
        workflow="report",
        create_time=_ts(2),
        schedule=run_pb2.ScheduleOrigin(
            schedule_id="report/nightly",
            nominal_time=_ts(0),
            fire_time=_ts(2),
            origin=run_pb2.SCHEDULE_RUN_ORIGIN_BACKFILL,
        ),
    )
    local = T0.astimezone()
    assert (
        f"schedule     report/nightly (backfill, tick {local:%Y-%m-%d %H:%M:%S}, fired "
        f"{local + timedelta(seconds=2):%Y-%m-%d %H:%M:%S})"
    ) in text.run_header(run)
    assert not any(line.startswith("schedule") for line in text.run_header(_runs()[0]))
