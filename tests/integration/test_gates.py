"""Gates against a real server, Postgres and Redis: pause and ResumeRun, approvals (routes,
votes, decision payloads, deadlines, races), event waits and PublishEvent (look-back,
de-duplication, many at once), cancels of waiting runs, and the audit history of every command,
refused ones included."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import pytest
from google.protobuf import duration_pb2
from grpc import StatusCode, aio
from squidmesh.v1 import history_pb2, run_pb2, run_service_pb2, workflow_pb2
from squidmesh.v1 import workflow_service_pb2 as wspb
from squidmesh.v1.run_service_pb2_grpc import RunServiceStub
from squidmesh.v1.workflow_service_pb2_grpc import WorkflowServiceStub

from server.embedded import EmbeddedUrls
from tests.integration.servers import running_app
from tests.integration.test_api import count_rows, details, payload
from tests.support import wait_for_async
from worker_sdk import struct_to_dict

if TYPE_CHECKING:
    from squidmesh.v1.run_service_pb2_grpc import RunServiceAsyncStub

Run = run_pb2.Run


def manual(d: workflow_pb2.WorkflowDefinition, *fields: workflow_pb2.PayloadField) -> None:
    d.triggers.add(name="manual", manual=workflow_pb2.ManualTrigger(), payload=list(fields))


def log_step(d: workflow_pb2.WorkflowDefinition, name: str, message: str) -> None:
    d.steps.add(name=name, log=workflow_pb2.LogStep(message=message))


def held() -> workflow_pb2.WorkflowDefinition:
    """hold (pause) → done (log) → complete."""
    d = workflow_pb2.WorkflowDefinition(name="held")
    manual(d)
    d.steps.add(name="hold", pause=workflow_pb2.PauseStep())
    log_step(d, "done", "resumed by {actors}")
    d.transitions.add(from_step="hold", to="done")
    return d


def reviewed(
    name: str = "reviewed", required: int = 1, deadline_ms: int | None = None
) -> workflow_pb2.WorkflowDefinition:
    """review (approval with a boolean `priority` decision field) → approved_log on ok,
    rejected_log on error."""
    d = workflow_pb2.WorkflowDefinition(name=name)
    manual(d)
    approval = workflow_pb2.ApprovalStep(
        required_approvals=required,
        fields=[workflow_pb2.PayloadField(name="priority", type=workflow_pb2.FIELD_TYPE_BOOLEAN)],
    )
    if deadline_ms is not None:
        approval.deadline.FromMilliseconds(deadline_ms)
    d.steps.add(name="review", approval=approval, output_key="review")
    log_step(d, "approved_log", "approved by {review.actors} priority={review.payload.priority}")
    log_step(d, "rejected_log", "rejected: {review.comments}")
    d.transitions.add(from_step="review", to="approved_log")
    d.transitions.add(from_step="review", on=workflow_pb2.OUTCOME_ERROR, to="rejected_log")
    return d


def settles(name: str = "settles") -> workflow_pb2.WorkflowDefinition:
    """hold (pause) → paid (wait_event payment.settled, key order:{order_id}) → done (log)."""
    d = workflow_pb2.WorkflowDefinition(name=name)
    manual(
        d,
        workflow_pb2.PayloadField(
            name="order_id", type=workflow_pb2.FIELD_TYPE_STRING, required=True
        ),
    )
    d.steps.add(name="hold", pause=workflow_pb2.PauseStep())
    d.steps.add(
        name="paid",
        wait_event=workflow_pb2.WaitEventStep(
            event="payment.settled", correlation_key="order:{order_id}"
        ),
        output_key="settlement",
    )
    log_step(d, "done", "settled {settlement.amount}")
    d.transitions.add(from_step="hold", to="paid")
    d.transitions.add(from_step="paid", to="done")
    return d


async def register(
    channel: aio.Channel, *definitions: workflow_pb2.WorkflowDefinition
) -> RunServiceAsyncStub:
    for d in definitions:
        await WorkflowServiceStub(channel).RegisterWorkflow(
            wspb.RegisterWorkflowRequest(definition=d)
        )
    return RunServiceStub(channel)


async def start(runs: RunServiceAsyncStub, workflow: str, **fields: Any) -> Run:
    request = run_service_pb2.StartRunRequest(workflow=workflow, payload=payload(**fields))
    return (await runs.StartRun(request)).run


async def get(runs: RunServiceAsyncStub, run_id: str) -> Run:
    return (await runs.GetRun(run_service_pb2.GetRunRequest(run_id=run_id))).run


def step_of(run: Run, name: str) -> run_pb2.StepRun:
    return next(s for s in run.steps if s.name == name)


async def refused(call: Any, code: StatusCode, reason: str) -> None:
    with pytest.raises(aio.AioRpcError) as raised:
        await call
    assert raised.value.code() == code, raised.value.details()
    assert details(raised.value)[0] == reason, raised.value.details()


async def commands(runs: RunServiceAsyncStub, run_id: str) -> list[history_pb2.Command]:
    history = await runs.GetRunHistory(run_service_pb2.GetRunHistoryRequest(run_id=run_id))
    return [e.command for e in history.entries if e.WhichOneof("entry") == "command"]


# --- pause ---------------------------------------------------------------------------------------


async def test_pause_holds_the_run_until_resumed_and_refusals_change_nothing(
    channel: aio.Channel, database_url: str
) -> None:
    runs = await register(channel, held())
    run = await start(runs, "held")
    assert run.status == run_pb2.RUN_STATUS_PAUSED
    assert [(s.name, s.status) for s in run.steps] == [("hold", run_pb2.STEP_STATUS_PAUSED)]
    assert await count_rows(database_url, "attempts") == 0  # no worker slot, no task

    # Refused: no actor; a step that is not a pause step; a key reused by another command.
    await refused(
        runs.ResumeRun(run_service_pb2.ResumeRunRequest(run_id=run.id)),
        StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    await refused(
        runs.ApproveStep(run_service_pb2.ApproveStepRequest(run_id=run.id, actor="ann")),
        StatusCode.FAILED_PRECONDITION,
        "STEP_NOT_WAITING",
    )
    await refused(
        runs.ResumeRun(run_service_pb2.ResumeRunRequest(run_id=run.id, step="nope", actor="ann")),
        StatusCode.INVALID_ARGUMENT,
        "STEP_NOT_FOUND",
    )
    assert (await get(runs, run.id)).last_sequence == run.last_sequence

    resume = run_service_pb2.ResumeRunRequest(
        run_id=run.id, actor="ann", comment="go on", idempotency_key="r1"
    )
    resumed = (await runs.ResumeRun(resume)).run
    assert resumed.status == run_pb2.RUN_STATUS_COMPLETED
    output = struct_to_dict(step_of(resumed, "hold").output.struct_value)
    assert output["actors"] == ["ann"] and output["comments"] == ["go on"]
    assert step_of(resumed, "done").output.struct_value.fields["message"].string_value == (
        'resumed by ["ann"]'
    )
    # The same key again returns the first result; a new resume finds nothing waiting.
    assert (await runs.ResumeRun(resume)).run.status == run_pb2.RUN_STATUS_COMPLETED
    await refused(
        runs.ResumeRun(run_service_pb2.ResumeRunRequest(run_id=run.id, actor="bob")),
        StatusCode.FAILED_PRECONDITION,
        "RUN_TERMINAL",
    )
    assert (await get(runs, run.id)).last_sequence == resumed.last_sequence

    recorded = [
        (c.type, c.actor, c.outcome, c.refusal_reason, c.idempotency_key)
        for c in await commands(runs, run.id)
    ]
    assert recorded == [
        (history_pb2.COMMAND_TYPE_START, "", history_pb2.COMMAND_OUTCOME_APPLIED, "", ""),
        (history_pb2.COMMAND_TYPE_RESUME, "", history_pb2.COMMAND_OUTCOME_REFUSED,
         "INVALID_ARGUMENT", ""),
        (history_pb2.COMMAND_TYPE_APPROVE, "ann", history_pb2.COMMAND_OUTCOME_REFUSED,
         "STEP_NOT_WAITING", ""),
        (history_pb2.COMMAND_TYPE_RESUME, "ann", history_pb2.COMMAND_OUTCOME_REFUSED,
         "STEP_NOT_FOUND", ""),
        (history_pb2.COMMAND_TYPE_RESUME, "ann", history_pb2.COMMAND_OUTCOME_APPLIED, "", "r1"),
        (history_pb2.COMMAND_TYPE_RESUME, "ann", history_pb2.COMMAND_OUTCOME_DUPLICATE, "", "r1"),
        (history_pb2.COMMAND_TYPE_RESUME, "bob", history_pb2.COMMAND_OUTCOME_REFUSED,
         "RUN_TERMINAL", ""),
    ]  # fmt: skip


async def test_a_paused_run_survives_a_restart_and_a_new_version(
    services: EmbeddedUrls, database_url: str
) -> None:
    async with (
        running_app(services, database_url) as first,
        aio.insecure_channel(f"127.0.0.1:{first.port}") as channel,
    ):
        runs = await register(channel, held())
        run = await start(runs, "held")
    changed = held()
    changed.steps[1].log.message = "version 2"
    async with (
        running_app(services, database_url) as second,
        aio.insecure_channel(f"127.0.0.1:{second.port}") as channel,
    ):
        runs = await register(channel, changed)
        assert (await get(runs, run.id)).status == run_pb2.RUN_STATUS_PAUSED
        resume = run_service_pb2.ResumeRunRequest(run_id=run.id, actor="ann")
        resumed = (await runs.ResumeRun(resume)).run
        assert resumed.workflow_version == 1
        message = step_of(resumed, "done").output.struct_value.fields["message"]
        assert message.string_value.startswith("resumed by")  # version 1's step
        newer = await start(runs, "held")
        assert newer.workflow_version == 2


async def test_cancel_of_a_paused_or_waiting_run_is_immediate(
    channel: aio.Channel, database_url: str
) -> None:
    runs = await register(channel, held(), settles())
    paused = await start(runs, "held")
    cancel = run_service_pb2.CancelRunRequest(run_id=paused.id, actor="ops", reason="no")
    assert (await runs.CancelRun(cancel)).run.status == run_pb2.RUN_STATUS_CANCELLED
    waiting = await start(runs, "settles", order_id="c1")
    await runs.ResumeRun(run_service_pb2.ResumeRunRequest(run_id=waiting.id, actor="ann"))
    assert (await get(runs, waiting.id)).status == run_pb2.RUN_STATUS_WAITING
    cancel = run_service_pb2.CancelRunRequest(run_id=waiting.id, actor="ops")
    cancelled = (await runs.CancelRun(cancel)).run
    assert cancelled.status == run_pb2.RUN_STATUS_CANCELLED
    assert step_of(cancelled, "paid").status == run_pb2.STEP_STATUS_CANCELLED
    assert await count_rows(database_url, "waits WHERE resolved_at IS NULL") == 0
    # An event for the cancelled run resolves nothing.
    published = await runs.PublishEvent(
        run_service_pb2.PublishEventRequest(name="payment.settled", correlation_key="order:c1")
    )
    assert list(published.resolved_run_ids) == []


# --- approvals -----------------------------------------------------------------------------------


async def test_approve_and_reject_follow_the_ok_and_error_routes_with_the_decision(
    channel: aio.Channel,
) -> None:
    runs = await register(channel, reviewed())
    approved_run = await start(runs, "reviewed")
    assert approved_run.status == run_pb2.RUN_STATUS_PAUSED
    approve = run_service_pb2.ApproveStepRequest(
        run_id=approved_run.id,
        actor="ann",
        comment="fine",
        payload=payload(priority=True),
        idempotency_key="k1",
    )
    response = await runs.ApproveStep(approve)
    assert (response.decided, response.approvals, response.required_approvals) == (True, 1, 1)
    run = response.run
    assert run.status == run_pb2.RUN_STATUS_COMPLETED
    decision = struct_to_dict(run.context)["review"]
    assert (decision["decision"], decision["actors"], decision["comments"]) == (
        "approved",
        ["ann"],
        ["fine"],
    )
    assert decision["payload"] == {"priority": True} and decision["decided_at"]
    message = step_of(run, "approved_log").output.struct_value.fields["message"].string_value
    assert message == 'approved by ["ann"] priority=true'

    # The same key and command: the first result; another command with it: ALREADY_EXISTS.
    again = await runs.ApproveStep(approve)
    assert again.decided and again.run.last_sequence == run.last_sequence
    await refused(
        runs.RejectStep(
            run_service_pb2.RejectStepRequest(
                run_id=approved_run.id, actor="ann", idempotency_key="k1"
            )
        ),
        StatusCode.ALREADY_EXISTS,
        "IDEMPOTENCY_KEY_REUSED",
    )

    rejected_run = await start(runs, "reviewed")
    # A decision payload is checked against the declared fields: nothing changes on refusal.
    await refused(
        runs.RejectStep(
            run_service_pb2.RejectStepRequest(
                run_id=rejected_run.id, actor="bob", payload=payload(priority="high", extra=1)
            )
        ),
        StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    assert (await get(runs, rejected_run.id)).last_sequence == rejected_run.last_sequence
    reject = run_service_pb2.RejectStepRequest(
        run_id=rejected_run.id, step="review", actor="bob", comment="too risky"
    )
    run = (await runs.RejectStep(reject)).run
    assert run.status == run_pb2.RUN_STATUS_COMPLETED  # the error route ends in a log step
    review = step_of(run, "review")
    assert review.status == run_pb2.STEP_STATUS_FAILED
    assert review.error.reason == "approval_rejected"
    assert struct_to_dict(review.output.struct_value)["decision"] == "rejected"
    message = step_of(run, "rejected_log").output.struct_value.fields["message"].string_value
    assert message == 'rejected: ["too risky"]'


async def test_required_approvals_count_distinct_actors_and_each_vote_is_an_event(
    channel: aio.Channel,
) -> None:
    runs = await register(channel, reviewed("two_eyes", required=2))
    run = await start(runs, "two_eyes")

    def approve(actor: str) -> Any:
        return runs.ApproveStep(run_service_pb2.ApproveStepRequest(run_id=run.id, actor=actor))

    first = await approve("ann")
    assert (first.decided, first.approvals, first.required_approvals) == (False, 1, 2)
    assert first.run.status == run_pb2.RUN_STATUS_PAUSED
    await refused(approve("ann"), StatusCode.FAILED_PRECONDITION, "ALREADY_APPROVED")
    second = await approve("bob")
    assert (second.decided, second.approvals) == (True, 2)
    assert second.run.status == run_pb2.RUN_STATUS_COMPLETED
    assert struct_to_dict(second.run.context)["review"]["actors"] == ["ann", "bob"]
    history = await runs.GetRunHistory(run_service_pb2.GetRunHistoryRequest(run_id=run.id))
    votes = [
        e.event for e in history.entries if e.event.type == run_pb2.RUN_EVENT_TYPE_APPROVAL_VOTED
    ]
    assert [struct_to_dict(v.data)["actor"] for v in votes] == ["ann"]


async def test_racing_approvers_one_decision_applies(channel: aio.Channel) -> None:
    runs = await register(channel, reviewed())
    for _ in range(5):
        run = await start(runs, "reviewed")
        results = await asyncio.gather(
            runs.ApproveStep(run_service_pb2.ApproveStepRequest(run_id=run.id, actor="ann")),
            runs.RejectStep(run_service_pb2.RejectStepRequest(run_id=run.id, actor="bob")),
            return_exceptions=True,
        )
        errors = [r for r in results if isinstance(r, aio.AioRpcError)]
        assert len(errors) == 1, results
        assert errors[0].code() == StatusCode.FAILED_PRECONDITION
        assert details(errors[0])[0] in ("STEP_NOT_WAITING", "RUN_TERMINAL")
        final = await get(runs, run.id)
        decided = [s.name for s in final.steps if s.name.endswith("_log")]
        assert len(decided) == 1


async def test_an_approval_deadline_rejects_it_on_time(channel: aio.Channel) -> None:
    runs = await register(channel, reviewed("timed", deadline_ms=300))
    began = time.monotonic()
    run = await start(runs, "timed")

    async def ended() -> Run | None:
        current = await get(runs, run.id)
        return current if current.status == run_pb2.RUN_STATUS_COMPLETED else None

    final = await wait_for_async(ended, 30, "the deadline to fire")
    elapsed = time.monotonic() - began
    assert elapsed >= 0.3
    review = step_of(final, "review")
    assert review.error.reason == "approval_rejected"
    decision = struct_to_dict(review.output.struct_value)
    assert decision["actors"] == ["squidmesh:deadline"]
    assert step_of(final, "rejected_log").status == run_pb2.STEP_STATUS_COMPLETED
    # Fired by the timer row, not a poll: well within the reconcile interval (1 s) of it.
    waited = review.end_time.ToDatetime() - review.create_time.ToDatetime()
    assert 0.3 <= waited.total_seconds() < 1.3, waited


async def test_approval_deadline_can_fail_the_run_or_route_elsewhere(channel: aio.Channel) -> None:
    failing = reviewed("fails_late", deadline_ms=200)
    failing.steps[0].approval.on_deadline = workflow_pb2.DEADLINE_ACTION_FAIL
    routed = reviewed("routes_late", deadline_ms=200)
    routed.steps[0].approval.on_deadline = workflow_pb2.DEADLINE_ACTION_ROUTE
    routed.steps[0].approval.on_deadline_step = "escalate"
    log_step(routed, "escalate", "escalated")
    routed.transitions.add(from_step="escalate", to="complete")
    runs = await register(channel, failing, routed)
    failed = await start(runs, "fails_late")
    escalated = await start(runs, "routes_late")

    async def terminal(run_id: str) -> Any:
        current = await get(runs, run_id)
        return current if current.status >= run_pb2.RUN_STATUS_COMPLETED else None

    final = await wait_for_async(lambda: terminal(failed.id), 30, "the failing deadline")
    assert final.status == run_pb2.RUN_STATUS_FAILED
    assert final.error.reason == "deadline_exceeded" and final.error.step == "review"
    final = await wait_for_async(lambda: terminal(escalated.id), 30, "the routing deadline")
    assert final.status == run_pb2.RUN_STATUS_COMPLETED
    assert [s.name for s in final.steps] == ["review", "escalate"]


# --- events --------------------------------------------------------------------------------------


async def test_an_event_published_before_the_wait_resolves_it_and_only_its_own_run(
    channel: aio.Channel,
) -> None:
    runs = await register(channel, settles())
    first = await start(runs, "settles", order_id="1")
    second = await start(runs, "settles", order_id="2")
    publish = run_service_pb2.PublishEventRequest(
        name="payment.settled",
        correlation_key="order:1",
        payload=payload(amount=42),
        event_id="evt-1",
        actor="psp",
    )
    published = await runs.PublishEvent(publish)
    assert published.created and list(published.resolved_run_ids) == []  # not waiting yet
    for run in (first, second):
        await runs.ResumeRun(run_service_pb2.ResumeRunRequest(run_id=run.id, actor="ann"))
    done = await get(runs, first.id)
    assert done.status == run_pb2.RUN_STATUS_COMPLETED
    assert struct_to_dict(done.context)["settlement"] == {"amount": 42}
    assert step_of(done, "done").output.struct_value.fields["message"].string_value == (
        "settled 42"
    )
    assert (await get(runs, second.id)).status == run_pb2.RUN_STATUS_WAITING

    # The same event id again changes nothing, even for a run that now waits for that key.
    duplicate = await runs.PublishEvent(
        run_service_pb2.PublishEventRequest(
            name="payment.settled", correlation_key="order:2", event_id="evt-1"
        )
    )
    assert not duplicate.created and list(duplicate.resolved_run_ids) == []
    assert (await get(runs, second.id)).status == run_pb2.RUN_STATUS_WAITING
    own = await runs.PublishEvent(
        run_service_pb2.PublishEventRequest(
            name="payment.settled", correlation_key="order:2", payload=payload(amount=7)
        )
    )
    assert own.created and list(own.resolved_run_ids) == [second.id] and own.event_id
    final = await get(runs, second.id)
    assert struct_to_dict(final.context)["settlement"] == {"amount": 7}
    recorded = [(c.type, c.actor, c.idempotency_key) for c in await commands(runs, first.id)]
    assert (history_pb2.COMMAND_TYPE_EVENT, "psp", "evt-1") in recorded


async def test_many_concurrent_events_resolve_each_waiting_run_exactly_once(
    channel: aio.Channel, database_url: str
) -> None:
    runs = await register(channel, settles("bulk"))
    count = 100
    started = [await start(runs, "bulk", order_id=str(i)) for i in range(count)]
    await asyncio.gather(
        *(
            runs.ResumeRun(run_service_pb2.ResumeRunRequest(run_id=r.id, actor="ann"))
            for r in started
        )
    )
    responses = await asyncio.gather(
        *(
            runs.PublishEvent(
                run_service_pb2.PublishEventRequest(
                    name="payment.settled",
                    correlation_key=f"order:{i}",
                    payload=payload(amount=i),
                    event_id=f"bulk-{i}",
                )
            )
            for i in range(count)
        )
    )
    assert [list(r.resolved_run_ids) for r in responses] == [[r.id] for r in started]
    for i, run in enumerate(started):
        final = await get(runs, run.id)
        assert final.status == run_pb2.RUN_STATUS_COMPLETED
        assert struct_to_dict(final.context)["settlement"] == {"amount": i}
    resolved = await count_rows(database_url, "run_commands WHERE type = 'event'")
    assert resolved == count


async def test_event_and_command_input_errors_write_nothing(
    channel: aio.Channel, database_url: str
) -> None:
    runs = await register(channel, settles())
    await refused(
        runs.PublishEvent(run_service_pb2.PublishEventRequest(name="payment.settled")),
        StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    await refused(
        runs.ResumeRun(
            run_service_pb2.ResumeRunRequest(
                run_id="00000000-0000-0000-0000-000000000000", actor="ann"
            )
        ),
        StatusCode.NOT_FOUND,
        "RUN_NOT_FOUND",
    )
    await refused(
        runs.ApproveStep(
            run_service_pb2.ApproveStepRequest(run_id="00000000-0000-0000-0000-000000000000")
        ),
        StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    assert await count_rows(database_url, "published_events") == 0
    assert await count_rows(database_url, "run_commands") == 0


async def test_a_wait_event_deadline_follows_the_error_route(channel: aio.Channel) -> None:
    d = settles("late_payment")
    d.steps[1].wait_event.deadline.CopyFrom(duration_pb2.Duration(nanos=200_000_000))
    log_step(d, "chase", "no payment")
    d.transitions.add(from_step="paid", on=workflow_pb2.OUTCOME_ERROR, to="chase")
    runs = await register(channel, d)
    run = await start(runs, "late_payment", order_id="9")
    await runs.ResumeRun(run_service_pb2.ResumeRunRequest(run_id=run.id, actor="ann"))

    async def ended() -> Run | None:
        current = await get(runs, run.id)
        return current if current.status == run_pb2.RUN_STATUS_COMPLETED else None

    final = await wait_for_async(ended, 30, "the event deadline")
    assert step_of(final, "paid").error.reason == "deadline_exceeded"
    assert step_of(final, "chase").status == run_pb2.STEP_STATUS_COMPLETED


async def test_history_pages_join_up_into_the_whole_history(channel: aio.Channel) -> None:
    runs = await register(channel, reviewed("paged", required=3))
    run = await start(runs, "paged")
    for actor in ("ann", "bob", "ann", "cy"):  # ann's second vote is refused
        try:
            await runs.ApproveStep(run_service_pb2.ApproveStepRequest(run_id=run.id, actor=actor))
        except aio.AioRpcError as error:
            assert error.code() == StatusCode.FAILED_PRECONDITION
    whole = await runs.GetRunHistory(
        run_service_pb2.GetRunHistoryRequest(run_id=run.id, page_size=1000)
    )
    assert not whole.next_page_token
    for size in (1, 2, 3):
        entries: list[history_pb2.HistoryEntry] = []
        token = ""
        while True:
            page = await runs.GetRunHistory(
                run_service_pb2.GetRunHistoryRequest(
                    run_id=run.id, page_size=size, page_token=token
                )
            )
            assert len(page.entries) <= size
            entries += page.entries
            token = page.next_page_token
            if not token:
                break
        assert entries == list(whole.entries)
    kinds = [e.WhichOneof("entry") for e in whole.entries]
    assert kinds[:2] == ["command", "event"]  # the start, then its run_created event
    assert kinds.count("command") == 5  # start, three approvals, one refusal
