"""What `runs explain`, `runs history` and `workers list` print for people: the status and
summary, blockers with relative times and evidence, next actions allowed or not and why; one
history row per command (a refusal with its reason) or event; one row per worker."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from squidmesh.cli import diagnosis_text
from squidmesh.cli.output import Output
from squidmesh.v1 import (
    diagnosis_pb2,
    history_pb2,
    run_pb2,
    run_service_pb2,
    worker_service_pb2,
)
from squidmesh.values import to_struct

T0 = datetime(2026, 11, 21, 19, 6, 49, 826000, tzinfo=UTC)
NOW = T0 + timedelta(seconds=184)


def _ts(seconds_after_t0: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(T0 + timedelta(seconds=seconds_after_t0))
    return stamp


def _local(seconds_after_t0: float) -> str:
    """A time as the CLI shows it: local date and time."""
    return f"{(T0 + timedelta(seconds=seconds_after_t0)).astimezone():%Y-%m-%d %H:%M:%S}"


def test_relative_times() -> None:
    assert diagnosis_text.relative(_ts(0), NOW) == "3m 04s ago"
    assert diagnosis_text.relative(_ts(196), NOW) == "in 12.0 s"
    assert diagnosis_text.relative(timestamp_pb2.Timestamp(), NOW) == "-"


def explained() -> run_service_pb2.ExplainRunResponse:
    return run_service_pb2.ExplainRunResponse(
        status=run_pb2.RUN_STATUS_PAUSED,
        summary="Step 'sign_off' waits for 1 more approval.",
        status_age=duration_pb2.Duration(seconds=184),
        blockers=[
            diagnosis_pb2.Blocker(
                code=diagnosis_pb2.BLOCKER_CODE_WAITING_APPROVAL,
                step="sign_off",
                since=_ts(0),
                until=_ts(3784),
                message="1 of 2 approvals",
                evidence=to_struct({"approvals": 1, "actors": ["ada"], "note": ""}),
            )
        ],
        next_actions=[
            diagnosis_pb2.NextAction(
                action=diagnosis_pb2.ACTION_TYPE_APPROVE, step="sign_off", allowed=True
            ),
            diagnosis_pb2.NextAction(
                action=diagnosis_pb2.ACTION_TYPE_REPLAY,
                allowed=False,
                reason="the run completed the irreversible step 'charge'",
            ),
            diagnosis_pb2.NextAction(action=diagnosis_pb2.ACTION_TYPE_PUBLISH_EVENT),
        ],
    )


def test_an_explanation_reads_top_down() -> None:
    lines = diagnosis_text.explain_lines("r-1", explained(), NOW)
    assert [line for line, _ in lines] == [
        "run          r-1",
        "status       paused for 3m 04s",
        "summary      Step 'sign_off' waits for 1 more approval.",
        "",
        "blockers",
        f"  WAITING_APPROVAL  step sign_off  since 3m 04s ago ({_local(0)}), "
        f"until in 1h 00m ({_local(3784)})",
        "    1 of 2 approvals",
        '    evidence: actors=["ada"] approvals=1',
        "",
        "next actions",
        "  approve sign_off  allowed",
        "  replay            not allowed: the run completed the irreversible step 'charge'",
        "  publish event     not allowed",
    ]
    styles = dict(lines)
    assert styles["  approve sign_off  allowed"] == "green"
    assert styles["  publish event     not allowed"] == "dim"
    assert styles["status       paused for 3m 04s"] == "magenta"


def test_a_terminal_run_and_codes_this_client_does_not_know() -> None:
    ended = run_service_pb2.ExplainRunResponse(
        status=run_pb2.RUN_STATUS_FAILED,
        summary="The run failed at step 'charge': card declined.",
        blockers=[
            diagnosis_pb2.Blocker(
                code=diagnosis_pb2.BLOCKER_CODE_RUN_FAILED,
                step="charge",
                evidence=to_struct({"error": {"reason": "handler_error", "traceback": "T..."}}),
            ),
            diagnosis_pb2.Blocker(code=diagnosis_pb2.BlockerCode.ValueType(99)),  # a newer code
        ],
    )
    lines = diagnosis_text.explain_lines("r-2", ended, NOW)
    assert lines[1] == ("status       failed", "red")
    assert lines[5] == ("  RUN_FAILED  step charge", "bold red")
    assert lines[6] == ('    evidence: error={"reason":"handler_error"}', "dim")  # no traceback
    assert lines[7] == ("  <99>", "yellow")
    assert len(lines) == 8  # no next actions: no header for them


def _history() -> list[history_pb2.HistoryEntry]:
    return [
        history_pb2.HistoryEntry(
            time=_ts(0),
            event=run_pb2.RunEvent(
                sequence=1,
                type=run_pb2.RUN_EVENT_TYPE_RUN_CREATED,
                run_status=run_pb2.RUN_STATUS_PENDING,
                data=to_struct({"workflow": "loan"}),
            ),
        ),
        history_pb2.HistoryEntry(
            time=_ts(1),
            command=history_pb2.Command(
                type=history_pb2.COMMAND_TYPE_APPROVE,
                actor="ada",
                comment="fine",
                idempotency_key="k-1",
                step="sign_off",
                outcome=history_pb2.COMMAND_OUTCOME_APPLIED,
            ),
        ),
        history_pb2.HistoryEntry(
            time=_ts(2),
            command=history_pb2.Command(
                type=history_pb2.COMMAND_TYPE_RESUME,
                actor="bob",
                outcome=history_pb2.COMMAND_OUTCOME_REFUSED,
                refusal_reason="STEP_NOT_WAITING",
                refusal_message="run 'r-1' has no paused step",
            ),
        ),
        history_pb2.HistoryEntry(
            time=_ts(3),
            command=history_pb2.Command(
                type=history_pb2.COMMAND_TYPE_EVENT,
                actor="shop",
                idempotency_key="evt-9",
                outcome=history_pb2.COMMAND_OUTCOME_APPLIED,
                step="settled",
                data=to_struct({"event": "payment.settled", "payload": {"amount": 5}}),
            ),
        ),
        history_pb2.HistoryEntry(
            time=_ts(4),
            event=run_pb2.RunEvent(
                sequence=12,
                type=run_pb2.RUN_EVENT_TYPE_STEP_COMPLETED,
                step="settled",
                run_status=run_pb2.RUN_STATUS_RUNNING,
                data=to_struct({"output": {"blob": "x" * 500}}),
            ),
        ),
    ]


def test_history_is_one_row_per_command_or_event(capsys: pytest.CaptureFixture[str]) -> None:
    Output("text").table(diagnosis_text.history_table(_history()))
    header, created, approved, refused, event, completed = capsys.readouterr().out.splitlines()
    assert header.split() == ["TIME", "KIND", "WHAT", "ACTOR", "KEY", "OUTCOME"]
    day = f"{(T0.astimezone()):%Y-%m-%d}"
    assert created.startswith(f"{day} ") and "[1] run_created workflow=loan" in created
    assert created.endswith("run pending")
    # Later rows show the time of day only (their date is the first row's).
    assert approved.split()[0] == f"{(T0 + timedelta(seconds=1)).astimezone():%H:%M:%S.%f}"[:-3]
    what = ["approve", "sign_off:", "fine"]
    assert approved.split()[1:] == ["command", *what, "ada", "k-1", "applied"]
    assert refused.split()[1:4] == ["command", "resume", "bob"]
    assert refused.endswith("refused [STEP_NOT_WAITING]: run 'r-1' has no paused step")
    assert event.split()[1:7] == ["command", "event", "settled", "payment.settled", "shop", "evt-9"]
    assert "[12] step_completed settled" in completed and "…" in completed
    assert len(completed) < 200  # an output is cut in the table (--output json has it whole)


def test_workers_show_slots_heartbeats_and_whether_they_are_live(
    capsys: pytest.CaptureFixture[str],
) -> None:
    workers = [
        worker_service_pb2.WorkerInfo(
            worker_id="vm-1-ab",
            host="vm",
            queues=["shop", "mail"],
            handlers=["shop.charge", "shop.ship"],
            slots_used=1,
            slots_total=10,
            connect_time=_ts(0),
            last_heartbeat_time=_ts(182),
            live=True,
        ),
        worker_service_pb2.WorkerInfo(
            worker_id="vm-2-cd",
            queues=["shop"],
            slots_total=4,
            connect_time=_ts(-50),
            last_heartbeat_time=_ts(10),
            disconnect_time=_ts(12),
        ),
    ]
    Output("text").table(diagnosis_text.workers_table(workers, NOW))
    header, live, gone = capsys.readouterr().out.splitlines()
    assert header.split() == [
        "WORKER",
        "HOST",
        "QUEUES",
        "HANDLERS",
        "SLOTS",
        "CONNECTED",
        "LAST",
        "HEARTBEAT",
        "STATE",
    ]
    assert live.split()[:6] == ["vm-1-ab", "vm", "shop,", "mail", "shop.charge,", "shop.ship"]
    assert live.split()[6] == "1/10" and live.endswith("2.0 s ago       live")
    assert gone.split()[:5] == ["vm-2-cd", "-", "shop", "-", "0/4"]
    assert _local(-50) in gone and gone.endswith("2m 54s ago      gone 2m 52s ago")
