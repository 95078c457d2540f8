"""ExplainRun against a real server, Postgres and Redis: runs put in each state with the real
worker protocol (the attempt stream, driven as the SDK drives it) and the real commands, and
the blockers, evidence and next actions the server gives for each."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from google.protobuf import duration_pb2, struct_pb2
from grpc import StatusCode, aio
from squidmesh.v1 import diagnosis_pb2 as dpb
from squidmesh.v1 import run_pb2, run_service_pb2, workflow_pb2, workflow_service_pb2
from squidmesh.v1 import worker_service_pb2 as wpb
from squidmesh.v1.run_service_pb2_grpc import RunServiceStub
from squidmesh.v1.workflow_service_pb2_grpc import WorkflowServiceStub

from server.store.db import libpq_url
from tests.integration.test_api import (
    details,
    payload,
    scheduled_attempt,
    start_and_claim,
    start_orders,
)
from tests.integration.test_workers import ORDERS_HANDLERS, connect_worker
from worker_sdk import struct_to_dict

Code = dpb.BlockerCode
Action = dpb.ActionType


async def explain(channel: aio.Channel, run_id: str) -> run_service_pb2.ExplainRunResponse:
    return await RunServiceStub(channel).ExplainRun(
        run_service_pb2.ExplainRunRequest(run_id=run_id)
    )


def codes(answer: run_service_pb2.ExplainRunResponse) -> list[str]:
    return [Code.Name(b.code) for b in answer.blockers]


def evidence(blocker: dpb.Blocker) -> dict[str, Any]:
    return struct_to_dict(blocker.evidence)


def actions(answer: run_service_pb2.ExplainRunResponse) -> dict[str, tuple[str, bool, str]]:
    """(step, allowed, reason) of each next action, by action name."""
    return {Action.Name(a.action): (a.step, a.allowed, a.reason) for a in answer.next_actions}


def at(ts: Any) -> datetime:
    return ts.ToDatetime(tzinfo=UTC)  # type: ignore[no-any-return]


async def attempt_times(database_url: str, run_id: str, step: str) -> dict[str, Any]:
    """The latest attempt of the step: when due, published, and its lease's end."""
    async with await psycopg.AsyncConnection.connect(libpq_url(database_url)) as conn:
        cursor = await conn.execute(
            "SELECT due_at, kicked_at, lease_expires_at, started_at FROM attempts "
            "WHERE run_id = %s AND step_name = %s ORDER BY number DESC LIMIT 1",
            (run_id, step),
        )
        row = await cursor.fetchone()
    assert row is not None
    return dict(zip(("due", "kicked", "lease", "started"), row, strict=True))


async def register(channel: aio.Channel, definition: workflow_pb2.WorkflowDefinition) -> None:
    await WorkflowServiceStub(channel).RegisterWorkflow(
        workflow_service_pb2.RegisterWorkflowRequest(definition=definition)
    )


async def start(channel: aio.Channel, workflow: str, **fields: Any) -> run_pb2.Run:
    return (
        await RunServiceStub(channel).StartRun(
            run_service_pb2.StartRunRequest(workflow=workflow, payload=payload(**fields))
        )
    ).run


def failed(attempt_id: str, token: str, **options: Any) -> wpb.AttemptFailed:
    return wpb.AttemptFailed(
        attempt_id=attempt_id, token=token, error_type="Boom", message="it broke", **options
    )


async def test_an_unknown_run_is_not_found(channel: aio.Channel) -> None:
    with pytest.raises(aio.AioRpcError) as raised:
        await explain(channel, "00000000-0000-0000-0000-000000000000")
    assert raised.value.code() == StatusCode.NOT_FOUND
    assert details(raised.value)[0] == "RUN_NOT_FOUND"
    with pytest.raises(aio.AioRpcError) as raised:
        await explain(channel, "not-a-run")
    assert raised.value.code() == StatusCode.INVALID_ARGUMENT


async def test_a_run_no_worker_serves_waits_for_one_until_one_with_the_handler_connects(
    channel: aio.Channel, database_url: str
) -> None:
    run, attempt_id, token = await start_orders(channel, database_url)
    answer = await explain(channel, run.id)
    assert answer.status == run_pb2.RUN_STATUS_PENDING
    assert codes(answer) == ["BLOCKER_CODE_NO_WORKER_FOR_HANDLER"]
    blocker = answer.blockers[0]
    assert blocker.step == "reserve"
    assert evidence(blocker) == {
        "attempt_number": 1,
        "handler": "orders.reserve",
        "queue": "orders",
        "workers_without_handler": [],
    }
    assert "no live worker serves handler 'orders.reserve' on queue 'orders'" in answer.summary
    assert actions(answer) == {
        "ACTION_TYPE_START_WORKER": ("reserve", True, ""),
        "ACTION_TYPE_CANCEL": ("", True, ""),
        "ACTION_TYPE_REPLAY": ("", True, ""),
    }
    assert answer.status_age.ToTimedelta() >= timedelta(0)

    # A worker on the queue without the handler is named, and changes nothing.
    other = await connect_worker(channel, "w-other", ["orders.ship"])
    answer = await explain(channel, run.id)
    assert codes(answer) == ["BLOCKER_CODE_NO_WORKER_FOR_HANDLER"]
    assert evidence(answer.blockers[0])["workers_without_handler"] == ["w-other"]

    # A worker with the handler connects: the attempt now only waits to be claimed.
    worker = await connect_worker(channel, "w1", ORDERS_HANDLERS)
    answer = await explain(channel, run.id)
    assert codes(answer) == ["BLOCKER_CODE_DISPATCHED_NOT_STARTED"]
    times = await attempt_times(database_url, run.id, "reserve")
    assert at(answer.blockers[0].since) == times["kicked"]
    assert evidence(answer.blockers[0])["workers_with_free_slots"] == ["w1"]
    assert "ACTION_TYPE_START_WORKER" not in actions(answer)

    # It claims it: the attempt runs there, until its lease ends unless it heartbeats.
    claimed = await worker.send(
        started=wpb.AttemptStarted(attempt_id=attempt_id, token=token, worker_id="w1")
    )
    assert claimed.start.accepted
    answer = await explain(channel, run.id)
    assert answer.status == run_pb2.RUN_STATUS_RUNNING
    assert codes(answer) == ["BLOCKER_CODE_ATTEMPT_RUNNING"]
    times = await attempt_times(database_url, run.id, "reserve")
    running = answer.blockers[0]
    assert (at(running.since), at(running.until)) == (times["started"], times["lease"])
    facts = evidence(running)
    assert (facts["worker_id"], facts["worker_live"], facts["attempt_number"]) == ("w1", True, 1)
    assert facts["last_heartbeat"] is not None
    other.call.cancel()
    worker.call.cancel()


async def test_a_run_whose_only_worker_is_busy_waits_for_a_slot(
    channel: aio.Channel, database_url: str
) -> None:
    worker = await connect_worker(channel, "w1", ORDERS_HANDLERS, concurrency=1)
    await start_and_claim(channel, database_url, worker, "w1")
    second, _, _ = await start_orders(channel, database_url)
    answer = await explain(channel, second.id)
    assert codes(answer) == ["BLOCKER_CODE_WORKERS_BUSY"]
    facts = evidence(answer.blockers[0])
    assert (facts["workers"], facts["slots_used"], facts["slots_total"]) == (["w1"], 1, 1)
    worker.call.cancel()


async def test_a_retry_waits_for_its_backoff_with_the_last_error(
    channel: aio.Channel, database_url: str
) -> None:
    worker = await connect_worker(channel, "w1", ORDERS_HANDLERS)
    run, attempt_id, token = await start_and_claim(channel, database_url, worker, "w1")
    answer = await worker.send(
        failed=failed(attempt_id, token, retry_after=duration_pb2.Duration(seconds=600))
    )
    assert answer.result.accepted
    explained = await explain(channel, run.id)
    assert explained.status == run_pb2.RUN_STATUS_RETRYING
    assert codes(explained) == ["BLOCKER_CODE_RETRY_BACKOFF"]
    blocker = explained.blockers[0]
    times = await attempt_times(database_url, run.id, "reserve")
    assert at(blocker.until) == times["due"]
    facts = evidence(blocker)
    assert facts["attempt_number"] == 2
    assert (facts["last_error"]["type"], facts["last_error"]["message"]) == ("Boom", "it broke")
    assert "Boom: it broke" in explained.summary
    worker.call.cancel()


async def test_a_wait_step_and_steps_waiting_for_their_prerequisites(
    channel: aio.Channel, database_url: str
) -> None:
    cooling = workflow_pb2.WorkflowDefinition(name="cooling")
    cooling.triggers.add(name="manual", manual=workflow_pb2.ManualTrigger())
    cooling.steps.add(
        name="cool", wait=workflow_pb2.WaitStep(duration=duration_pb2.Duration(seconds=3600))
    )
    await register(channel, cooling)
    run = await start(channel, "cooling")
    answer = await explain(channel, run.id)
    assert answer.status == run_pb2.RUN_STATUS_WAITING
    assert codes(answer) == ["BLOCKER_CODE_WAITING_TIMER"]
    times = await attempt_times(database_url, run.id, "cool")
    assert at(answer.blockers[0].until) == times["due"]
    assert evidence(answer.blockers[0]) == {"wait_ms": 3_600_000}

    dag = workflow_pb2.WorkflowDefinition(name="dag")
    dag.triggers.add(name="manual", manual=workflow_pb2.ManualTrigger())
    dag.steps.add(name="a", task=workflow_pb2.TaskStep(handler="dag.a"))
    dag.steps.add(name="b", task=workflow_pb2.TaskStep(handler="dag.b"))
    dag.steps.add(name="c", task=workflow_pb2.TaskStep(handler="dag.c"), after=["a", "b"])
    await register(channel, dag)
    worker = await connect_worker(channel, "w-dag", ["dag.a", "dag.b"], queues=("dag",))
    run = await start(channel, "dag")
    a_id, a_token = await scheduled_attempt(database_url, run.id, "a")
    claim = wpb.AttemptStarted(attempt_id=a_id, token=a_token, worker_id="w-dag")
    assert (await worker.send(started=claim)).start.accepted
    done = wpb.AttemptCompleted(
        attempt_id=a_id, token=a_token, output=struct_pb2.Value(string_value="ok")
    )
    assert (await worker.send(completed=done)).result.accepted
    answer = await explain(channel, run.id)
    assert codes(answer) == [
        "BLOCKER_CODE_DISPATCHED_NOT_STARTED",
        "BLOCKER_CODE_WAITING_DEPENDENCIES",
    ]
    assert answer.blockers[0].step == "b"
    waiting = answer.blockers[1]
    assert waiting.step == "c"
    assert evidence(waiting) == {
        "waiting_for": ["b"],
        "done": ["a"],
        "statuses": {"b": "scheduled"},
    }
    worker.call.cancel()


async def test_a_failed_run_names_its_step_attempt_and_error(
    channel: aio.Channel, database_url: str
) -> None:
    worker = await connect_worker(channel, "w1", ORDERS_HANDLERS)
    run, attempt_id, token = await start_and_claim(channel, database_url, worker, "w1")
    assert (await worker.send(failed=failed(attempt_id, token, non_retryable=True))).result.accepted
    answer = await explain(channel, run.id)
    assert answer.status == run_pb2.RUN_STATUS_FAILED
    assert codes(answer) == ["BLOCKER_CODE_RUN_FAILED"]
    blocker = answer.blockers[0]
    assert blocker.step == "reserve"
    facts = evidence(blocker)
    assert (facts["attempt_number"], facts["type"], facts["message"]) == (1, "Boom", "it broke")
    assert facts["reason"] == "handler_error"
    assert answer.summary == "The run failed at step 'reserve' (attempt 1): Boom: it broke."
    assert actions(answer) == {
        "ACTION_TYPE_CANCEL": ("", False, "the run is failed: a terminal run cannot be cancelled"),
        "ACTION_TYPE_REPLAY": ("", True, ""),
    }
    worker.call.cancel()


async def test_a_run_that_completed_an_irreversible_step_cannot_be_replayed(
    channel: aio.Channel, database_url: str
) -> None:
    worker = await connect_worker(channel, "w1", ORDERS_HANDLERS)
    run, attempt_id, token = await start_and_claim(channel, database_url, worker, "w1")
    for step in ("reserve", "ship"):
        if step == "ship":
            attempt_id, token = await scheduled_attempt(database_url, run.id, "ship")
            claim = wpb.AttemptStarted(attempt_id=attempt_id, token=token, worker_id="w1")
            assert (await worker.send(started=claim)).start.accepted
        done = wpb.AttemptCompleted(
            attempt_id=attempt_id, token=token, output=struct_pb2.Value(bool_value=True)
        )
        assert (await worker.send(completed=done)).result.accepted
    answer = await explain(channel, run.id)
    assert answer.status == run_pb2.RUN_STATUS_COMPLETED
    assert codes(answer) == ["BLOCKER_CODE_RUN_COMPLETED"]
    assert actions(answer)["ACTION_TYPE_REPLAY"] == (
        "",
        False,
        "replay refused: the run completed the irreversible step 'ship' "
        "(allow_irreversible overrides)",
    )
    worker.call.cancel()


async def test_a_cancel_waits_for_the_running_attempt_then_the_run_is_cancelled(
    channel: aio.Channel, database_url: str
) -> None:
    worker = await connect_worker(channel, "w1", ORDERS_HANDLERS)
    run, attempt_id, token = await start_and_claim(channel, database_url, worker, "w1")
    runs = RunServiceStub(channel)
    await runs.CancelRun(
        run_service_pb2.CancelRunRequest(run_id=run.id, actor="ops", reason="duplicate order")
    )
    answer = await explain(channel, run.id)
    assert answer.status == run_pb2.RUN_STATUS_CANCELLING
    assert codes(answer) == ["BLOCKER_CODE_CANCELLING"]
    blocker = answer.blockers[0]
    times = await attempt_times(database_url, run.id, "reserve")
    assert (blocker.step, at(blocker.until)) == ("reserve", times["lease"])
    assert evidence(blocker)["worker_id"] == "w1"

    stopped = failed(attempt_id, token)
    stopped.error_type = "Cancelled"
    assert (await worker.send(failed=stopped)).result.accepted
    answer = await explain(channel, run.id)
    assert answer.status == run_pb2.RUN_STATUS_CANCELLED
    assert codes(answer) == ["BLOCKER_CODE_RUN_CANCELLED"]
    assert evidence(answer.blockers[0]) == {"actor": "ops", "reason": "duplicate order"}
    assert not actions(answer)["ACTION_TYPE_CANCEL"][1]
    worker.call.cancel()


async def test_an_attempt_given_back_by_a_worker_without_its_handler(
    channel: aio.Channel, database_url: str
) -> None:
    old = await connect_worker(channel, "w-old", ["orders.ship"])
    ready = await connect_worker(channel, "w-new", ORDERS_HANDLERS)
    run, attempt_id, token = await start_orders(channel, database_url)
    declined = wpb.AttemptDeclined(
        attempt_id=attempt_id, token=token, worker_id="w-old", reason="handler_unknown"
    )
    assert not (await old.send(declined=declined)).start.accepted
    # Whether it is still in its backoff or already published again, the decline explains it.
    answer = await explain(channel, run.id)
    assert codes(answer) == ["BLOCKER_CODE_HANDLER_DECLINED"]
    facts = evidence(answer.blockers[0])
    assert (facts["declined_by"], facts["handler"]) == ("w-old", "orders.reserve")
    old.call.cancel()
    ready.call.cancel()


async def test_compensations_are_explained_with_what_each_waits_for(
    channel: aio.Channel, database_url: str
) -> None:
    saga = workflow_pb2.WorkflowDefinition(name="saga")
    saga.triggers.add(name="manual", manual=workflow_pb2.ManualTrigger())
    saga.steps.add(
        name="reserve", task=workflow_pb2.TaskStep(handler="saga.reserve"), compensate="saga.undo"
    )
    saga.steps.add(name="ship", task=workflow_pb2.TaskStep(handler="saga.ship"))
    saga.transitions.add(from_step="reserve", to="ship")
    await register(channel, saga)
    worker = await connect_worker(
        channel, "w-saga", ["saga.reserve", "saga.ship"], queues=("saga",)
    )
    run = await start(channel, "saga")
    for step in ("reserve", "ship"):  # reserve completes, then ship fails for good
        attempt_id, token = await scheduled_attempt(database_url, run.id, step)
        claim = wpb.AttemptStarted(attempt_id=attempt_id, token=token, worker_id="w-saga")
        assert (await worker.send(started=claim)).start.accepted
        if step == "reserve":
            result = await worker.send(
                completed=wpb.AttemptCompleted(
                    attempt_id=attempt_id, token=token, output=struct_pb2.Value(bool_value=True)
                )
            )
        else:
            result = await worker.send(failed=failed(attempt_id, token, non_retryable=True))
        assert result.result.accepted
    answer = await explain(channel, run.id)
    assert answer.status == run_pb2.RUN_STATUS_COMPENSATING
    assert codes(answer) == [
        "BLOCKER_CODE_COMPENSATING",
        "BLOCKER_CODE_NO_WORKER_FOR_HANDLER",
    ]
    assert answer.blockers[0].step == "ship"
    assert evidence(answer.blockers[0])["compensations"] == {"reserve": "scheduled"}
    assert answer.blockers[1].step == "reserve:compensate"
    assert evidence(answer.blockers[1])["handler"] == "saga.undo"
    worker.call.cancel()


def gates_workflow() -> workflow_pb2.WorkflowDefinition:
    """An approval by two people, a pause, an event and a child run, one after the other."""
    d = workflow_pb2.WorkflowDefinition(name="gates")
    d.triggers.add(
        name="manual",
        manual=workflow_pb2.ManualTrigger(),
        payload=[
            workflow_pb2.PayloadField(
                name="order", type=workflow_pb2.FIELD_TYPE_STRING, required=True
            )
        ],
    )
    d.steps.add(
        name="sign_off",
        approval=workflow_pb2.ApprovalStep(
            required_approvals=2,
            deadline=duration_pb2.Duration(seconds=3600),
            on_deadline=workflow_pb2.DEADLINE_ACTION_FAIL,
        ),
    )
    d.steps.add(name="hold", pause=workflow_pb2.PauseStep())
    d.steps.add(
        name="settled",
        wait_event=workflow_pb2.WaitEventStep(
            event="payment.settled", correlation_key="order:{order}"
        ),
    )
    d.steps.add(name="child", wait_child=workflow_pb2.WaitChildStep(key="{order}-child"))
    d.transitions.add(from_step="sign_off", to="hold")
    d.transitions.add(from_step="sign_off", on=workflow_pb2.OUTCOME_ERROR, to="complete")
    d.transitions.add(from_step="hold", to="settled")
    d.transitions.add(from_step="settled", to="child")
    d.transitions.add(from_step="child", to="complete")
    return d


async def test_gates_are_explained_with_their_evidence_and_actions(
    channel: aio.Channel, database_url: str
) -> None:
    await register(channel, gates_workflow())
    runs = RunServiceStub(channel)
    run = await start(channel, "gates", order="42")

    answer = await explain(channel, run.id)
    assert answer.status == run_pb2.RUN_STATUS_PAUSED
    assert codes(answer) == ["BLOCKER_CODE_WAITING_APPROVAL"]
    approval = answer.blockers[0]
    facts = evidence(approval)
    assert (facts["approvals"], facts["required_approvals"], facts["on_deadline"]) == (0, 2, "fail")
    # The deadline is the wait's: an hour after the step was reached.
    assert at(approval.until) - at(approval.since) == timedelta(hours=1)
    assert actions(answer) == {
        "ACTION_TYPE_APPROVE": ("sign_off", True, ""),
        "ACTION_TYPE_REJECT": ("sign_off", True, ""),
        "ACTION_TYPE_CANCEL": ("", True, ""),
        "ACTION_TYPE_REPLAY": ("", True, ""),
    }

    await runs.ApproveStep(
        run_service_pb2.ApproveStepRequest(run_id=run.id, actor="alice", comment="fine")
    )
    answer = await explain(channel, run.id)
    assert codes(answer) == ["BLOCKER_CODE_WAITING_APPROVAL"]
    facts = evidence(answer.blockers[0])
    assert (facts["approvals"], facts["approved_by"]) == (1, ["alice"])
    assert "1 of 2 approvals" in answer.summary

    await runs.ApproveStep(run_service_pb2.ApproveStepRequest(run_id=run.id, actor="bob"))
    answer = await explain(channel, run.id)
    assert (answer.status, codes(answer)) == (run_pb2.RUN_STATUS_PAUSED, ["BLOCKER_CODE_PAUSED"])
    assert answer.blockers[0].step == "hold"
    assert actions(answer)["ACTION_TYPE_RESUME"] == ("hold", True, "")

    await runs.ResumeRun(run_service_pb2.ResumeRunRequest(run_id=run.id, actor="carol"))
    answer = await explain(channel, run.id)
    assert (answer.status, codes(answer)) == (
        run_pb2.RUN_STATUS_WAITING,
        ["BLOCKER_CODE_WAITING_EVENT"],
    )
    facts = evidence(answer.blockers[0])
    assert (facts["event"], facts["correlation_key"]) == ("payment.settled", "order:42")
    assert actions(answer)["ACTION_TYPE_PUBLISH_EVENT"] == ("settled", True, "")
    assert "ACTION_TYPE_RESUME" not in actions(answer)

    await runs.PublishEvent(
        run_service_pb2.PublishEventRequest(
            name="payment.settled", correlation_key="order:42", event_id="e1"
        )
    )
    answer = await explain(channel, run.id)
    assert codes(answer) == ["BLOCKER_CODE_WAITING_CHILD"]
    facts = evidence(answer.blockers[0])
    assert (facts["child_key"], facts["child_run_id"]) == ("42-child", "")  # none started yet

    await runs.CancelRun(run_service_pb2.CancelRunRequest(run_id=run.id, actor="dave"))
    answer = await explain(channel, run.id)
    assert codes(answer) == ["BLOCKER_CODE_RUN_CANCELLED"]
