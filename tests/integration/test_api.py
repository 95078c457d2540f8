"""The gRPC API against a real server, Postgres and Redis: validation, errors, idempotency,
versioning, reflection and health. The worker protocol is driven directly through
WorkerService, the way the SDK drives it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from google.protobuf import duration_pb2, struct_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc import StatusCode, aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from squidmesh.v1 import run_pb2, run_service_pb2, workflow_pb2, workflow_service_pb2
from squidmesh.v1 import worker_service_pb2 as wpb
from squidmesh.v1.run_service_pb2_grpc import RunServiceStub
from squidmesh.v1.worker_service_pb2_grpc import WorkerServiceStub
from squidmesh.v1.workflow_service_pb2_grpc import WorkflowServiceStub

from server.embedded import EmbeddedUrls
from server.store.db import libpq_url
from tests.integration.servers import running_app
from worker_sdk import struct_to_dict

if TYPE_CHECKING:  # the async stub type exists only in the generated .pyi
    from squidmesh.v1.run_service_pb2_grpc import RunServiceAsyncStub


def definition(name: str = "orders", handler_suffix: str = "") -> workflow_pb2.WorkflowDefinition:
    d = workflow_pb2.WorkflowDefinition(name=name, description="test")
    d.triggers.add(
        name="manual",
        manual=workflow_pb2.ManualTrigger(),
        payload=[
            workflow_pb2.PayloadField(
                name="amount", type=workflow_pb2.FIELD_TYPE_NUMBER, required=True
            ),
            workflow_pb2.PayloadField(
                name="count",
                type=workflow_pb2.FIELD_TYPE_INTEGER,
                default_value=struct_pb2.Value(number_value=1),
            ),
        ],
    )
    d.triggers.add(  # a second entry point with the same contract
        name="import", manual=workflow_pb2.ManualTrigger(), payload=d.triggers[0].payload
    )
    d.steps.add(
        name="reserve", task=workflow_pb2.TaskStep(handler=f"orders.reserve{handler_suffix}")
    )
    d.steps.add(name="ship", irreversible=True, task=workflow_pb2.TaskStep(handler="orders.ship"))
    d.transitions.add(from_step="reserve", to="ship")
    d.transitions.add(from_step="ship", to="complete")
    return d


async def register_orders(channel: aio.Channel) -> RunServiceAsyncStub:
    """Registers the `orders` workflow; returns a RunService stub to start its runs."""
    await WorkflowServiceStub(channel).RegisterWorkflow(
        workflow_service_pb2.RegisterWorkflowRequest(definition=definition())
    )
    return RunServiceStub(channel)


def details(error: aio.AioRpcError) -> tuple[str, list[tuple[str, str]]]:
    """(ErrorInfo reason, BadRequest field violations) of a failed call."""
    raw = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin")
    assert raw is not None, "no rich error details"
    status = status_pb2.Status.FromString(raw)
    reason, violations = "", []
    for any_detail in status.details:
        info = error_details_pb2.ErrorInfo()
        bad = error_details_pb2.BadRequest()
        if any_detail.Unpack(info):
            reason = info.reason
        elif any_detail.Unpack(bad):
            violations = [(v.field, v.description) for v in bad.field_violations]
    return reason, violations


def error_info(error: aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    raw = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin")
    assert raw is not None, "no rich error details"
    for any_detail in status_pb2.Status.FromString(raw).details:
        info = error_details_pb2.ErrorInfo()
        if any_detail.Unpack(info):
            return info
    raise AssertionError("no ErrorInfo")


def payload(**fields: Any) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(fields)
    return s


async def count_rows(database_url: str, table: str) -> int:
    async with await psycopg.AsyncConnection.connect(libpq_url(database_url)) as conn:
        row = await (await conn.execute(f"SELECT count(*) FROM {table}")).fetchone()
        assert row is not None
        return int(row[0])


async def test_reflection_lists_services_and_health_is_serving(channel: aio.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def requests() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    names = set()
    async for response in stub.ServerReflectionInfo(requests()):
        names = {s.name for s in response.list_services_response.service}
    assert {
        "squidmesh.v1.WorkflowService",
        "squidmesh.v1.RunService",
        "squidmesh.v1.WorkerService",
        "squidmesh.v1.ScheduleService",
    } <= names
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "squidmesh.v1.RunService"):
        response = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_register_is_versioned_and_validated(channel: aio.Channel) -> None:
    workflows = WorkflowServiceStub(channel)
    first = await workflows.RegisterWorkflow(
        workflow_service_pb2.RegisterWorkflowRequest(definition=definition())
    )
    assert (first.workflow.version, first.created) == (1, True)
    again = await workflows.RegisterWorkflow(
        workflow_service_pb2.RegisterWorkflowRequest(definition=definition())
    )
    assert (again.workflow.version, again.created) == (1, False)
    changed = await workflows.RegisterWorkflow(
        workflow_service_pb2.RegisterWorkflowRequest(definition=definition(handler_suffix="_v2"))
    )
    assert (changed.workflow.version, changed.created) == (2, True)
    got = await workflows.GetWorkflow(workflow_service_pb2.GetWorkflowRequest(name="orders"))
    assert got.workflow.version == 2
    old = await workflows.GetWorkflow(
        workflow_service_pb2.GetWorkflowRequest(name="orders", version=1)
    )
    assert old.workflow.definition.steps[0].task.handler == "orders.reserve"

    bad = definition()
    bad.transitions.add(from_step="ship", to="nowhere")
    bad.steps.add(name="reserve", task=workflow_pb2.TaskStep(handler="x"))
    with pytest.raises(aio.AioRpcError) as raised:
        await workflows.RegisterWorkflow(
            workflow_service_pb2.RegisterWorkflowRequest(definition=bad)
        )
    assert raised.value.code() == StatusCode.INVALID_ARGUMENT
    _, violations = details(raised.value)
    assert len(violations) >= 2
    fields = " ".join(f for f, _ in violations)
    assert "transitions" in fields and "steps" in fields

    with pytest.raises(aio.AioRpcError) as raised:
        await workflows.GetWorkflow(workflow_service_pb2.GetWorkflowRequest(name="nope"))
    assert raised.value.code() == StatusCode.NOT_FOUND


async def test_start_run_validation_and_idempotency(
    channel: aio.Channel, database_url: str
) -> None:
    workflows = WorkflowServiceStub(channel)
    runs = RunServiceStub(channel)
    await workflows.RegisterWorkflow(
        workflow_service_pb2.RegisterWorkflowRequest(definition=definition())
    )

    # Three problems, three field violations, nothing written.
    with pytest.raises(aio.AioRpcError) as raised:
        await runs.StartRun(
            run_service_pb2.StartRunRequest(
                workflow="orders", payload=payload(count="many", colour="red")
            )
        )
    assert raised.value.code() == StatusCode.INVALID_ARGUMENT
    _, violations = details(raised.value)
    assert sorted(f for f, _ in violations) == ["payload.amount", "payload.colour", "payload.count"]
    assert await count_rows(database_url, "runs") == 0

    for request, code, reason in [
        (
            run_service_pb2.StartRunRequest(workflow="nope"),
            StatusCode.NOT_FOUND,
            "WORKFLOW_NOT_FOUND",
        ),
        (
            run_service_pb2.StartRunRequest(
                workflow="orders", trigger="cron", payload=payload(amount=1)
            ),
            StatusCode.NOT_FOUND,
            "TRIGGER_NOT_FOUND",
        ),
    ]:
        with pytest.raises(aio.AioRpcError) as raised:
            await runs.StartRun(request)
        assert raised.value.code() == code
        assert details(raised.value)[0] == reason

    first = await runs.StartRun(
        run_service_pb2.StartRunRequest(
            workflow="orders", payload=payload(amount=10), idempotency_key="order-1"
        )
    )
    assert first.created
    assert first.run.status == run_pb2.RUN_STATUS_PENDING
    assert dict(first.run.payload) == {"amount": 10, "count": 1}
    same = await runs.StartRun(
        run_service_pb2.StartRunRequest(
            workflow="orders", payload=payload(amount=10), idempotency_key="order-1"
        )
    )
    assert (same.run.id, same.created) == (first.run.id, False)
    # A key names one request: another payload, or the same payload through another
    # trigger, is refused and names the run the key started.
    for trigger, amount in [("", 11), ("import", 10), ("manual", 11)]:
        with pytest.raises(aio.AioRpcError) as raised:
            await runs.StartRun(
                run_service_pb2.StartRunRequest(
                    workflow="orders",
                    trigger=trigger,
                    payload=payload(amount=amount),
                    idempotency_key="order-1",
                )
            )
        assert raised.value.code() == StatusCode.ALREADY_EXISTS
        info = error_info(raised.value)
        assert info.reason == "IDEMPOTENCY_KEY_REUSED"
        assert info.metadata["run_id"] == first.run.id
    explicit = await runs.StartRun(
        run_service_pb2.StartRunRequest(
            workflow="orders",
            trigger="manual",
            payload=payload(amount=10),
            idempotency_key="order-1",
        )
    )
    assert (explicit.run.id, explicit.created) == (first.run.id, False)
    assert await count_rows(database_url, "runs") == 1

    with pytest.raises(aio.AioRpcError) as raised:
        await runs.GetRun(run_service_pb2.GetRunRequest(run_id="not-a-uuid"))
    assert raised.value.code() == StatusCode.INVALID_ARGUMENT
    with pytest.raises(aio.AioRpcError) as raised:
        await runs.GetRun(
            run_service_pb2.GetRunRequest(run_id="00000000-0000-0000-0000-000000000000")
        )
    assert raised.value.code() == StatusCode.NOT_FOUND


class Protocol:
    """Drives the attempt stream the way a worker does, as the worker `worker_id`."""

    def __init__(self, channel: aio.Channel, worker_id: str = "w1") -> None:
        self.stub = WorkerServiceStub(channel)
        self.call = self.stub.StreamAttempts(metadata=(("squidmesh-worker-id", worker_id),))
        self.next_id = 0
        self.cancels: list[wpb.CancelAttempts] = []

    async def send(self, **message: object) -> wpb.StreamAttemptsResponse:
        self.next_id += 1
        await self.call.write(wpb.StreamAttemptsRequest(request_id=self.next_id, **message))  # type: ignore[arg-type]
        while True:
            response = await self.call.read()
            assert isinstance(response, wpb.StreamAttemptsResponse)
            if response.WhichOneof("message") == "cancel":  # pushed by the server: not ours
                self.cancels.append(response.cancel)
                continue
            assert response.request_id == self.next_id
            return response


async def scheduled_attempt(database_url: str, run_id: str, step: str) -> tuple[str, str]:
    async with await psycopg.AsyncConnection.connect(libpq_url(database_url)) as conn:
        row = await (
            await conn.execute(
                "SELECT id, token FROM attempts WHERE run_id = %s AND step_name = %s "
                "ORDER BY number DESC LIMIT 1",
                (run_id, step),
            )
        ).fetchone()
    assert row is not None
    return str(row[0]), str(row[1])


async def start_orders(channel: aio.Channel, database_url: str) -> tuple[Any, str, str]:
    """A new orders run and its first attempt: (run, attempt id, token)."""
    runs = await register_orders(channel)
    run = (
        await runs.StartRun(
            run_service_pb2.StartRunRequest(workflow="orders", payload=payload(amount=5))
        )
    ).run
    attempt_id, token = await scheduled_attempt(database_url, run.id, "reserve")
    return run, attempt_id, token


async def start_and_claim(
    channel: aio.Channel, database_url: str, protocol: Protocol, worker_id: str
) -> tuple[Any, str, str]:
    """A new orders run with its first attempt claimed: (run, attempt id, token)."""
    run, attempt_id, token = await start_orders(channel, database_url)
    claimed = await protocol.send(
        started=wpb.AttemptStarted(attempt_id=attempt_id, token=token, worker_id=worker_id)
    )
    assert claimed.start.accepted
    return run, attempt_id, token


async def run_events(channel: aio.Channel, run_id: str) -> list[run_pb2.RunEvent]:
    """The run's event log so far (WatchRun from 0, up to GetRun's last sequence)."""
    runs = RunServiceStub(channel)
    last = (await runs.GetRun(run_service_pb2.GetRunRequest(run_id=run_id))).run.last_sequence
    events: list[run_pb2.RunEvent] = []
    if last == 0:
        return events
    watch = runs.WatchRun(run_service_pb2.WatchRunRequest(run_id=run_id, after_sequence=0))
    async for message in watch:
        if message.HasField("event"):
            events.append(message.event)
            if message.event.sequence >= last:
                break
    watch.cancel()
    return events


async def test_fenced_attempt_protocol_cancel_and_replay(
    channel: aio.Channel, database_url: str
) -> None:
    runs = await register_orders(channel)
    run = (
        await runs.StartRun(
            run_service_pb2.StartRunRequest(workflow="orders", payload=payload(amount=5))
        )
    ).run
    protocol = Protocol(channel)
    attempt_id, token = await scheduled_attempt(database_url, run.id, "reserve")

    wrong = await protocol.send(
        started=wpb.AttemptStarted(attempt_id=attempt_id, token="x", worker_id="w1")
    )
    assert (wrong.start.accepted, wrong.start.refusal_reason) == (False, "stale")
    ok = await protocol.send(
        started=wpb.AttemptStarted(attempt_id=attempt_id, token=token, worker_id="w1")
    )
    assert ok.start.accepted and ok.start.step == "reserve"
    assert ok.start.idempotency_key == f"{run.id}:reserve"
    other = Protocol(channel, "w2")
    dup = await other.send(
        started=wpb.AttemptStarted(attempt_id=attempt_id, token=token, worker_id="w2")
    )
    assert (dup.start.accepted, dup.start.refusal_reason) == (False, "duplicate")
    # Fencing by worker: the right token from another worker's stream does not count.
    stolen = await other.send(
        completed=wpb.AttemptCompleted(
            attempt_id=attempt_id, token=token, output=struct_pb2.Value(string_value="mine")
        )
    )
    assert (stolen.result.accepted, stolen.result.refusal_reason) == (
        False,
        "not_claimed_by_this_worker",
    )
    foreign = await other.send(
        heartbeat=wpb.WorkerHeartbeat(
            worker_id="w2", attempts=[wpb.AttemptProgress(attempt_id=attempt_id, token=token)]
        )
    )
    assert list(foreign.heartbeat.lost_attempt_ids) == [attempt_id]
    posing = await other.send(
        heartbeat=wpb.WorkerHeartbeat(
            worker_id="w1", attempts=[wpb.AttemptProgress(attempt_id=attempt_id, token=token)]
        )
    )
    assert list(posing.heartbeat.lost_attempt_ids) == [attempt_id]
    other.call.cancel()

    beat = await protocol.send(
        heartbeat=wpb.WorkerHeartbeat(
            worker_id="w1", attempts=[wpb.AttemptProgress(attempt_id=attempt_id, token=token)]
        )
    )
    assert list(beat.heartbeat.lost_attempt_ids) == []

    done = await protocol.send(
        completed=wpb.AttemptCompleted(
            attempt_id=attempt_id, token=token, output=struct_pb2.Value(string_value="held")
        )
    )
    assert done.result.accepted
    resent = await protocol.send(
        completed=wpb.AttemptCompleted(
            attempt_id=attempt_id, token=token, output=struct_pb2.Value(string_value="held")
        )
    )
    assert resent.result.accepted  # idempotent resend
    late = await protocol.send(
        failed=wpb.AttemptFailed(
            attempt_id=attempt_id, token=token, error_type="Boom", message="late"
        )
    )
    assert not late.result.accepted

    ship_id, ship_token = await scheduled_attempt(database_url, run.id, "ship")
    assert (
        await protocol.send(
            started=wpb.AttemptStarted(attempt_id=ship_id, token=ship_token, worker_id="w1")
        )
    ).start.accepted
    # A retryable failure schedules attempt 2 after the default backoff.
    failed = await protocol.send(
        failed=wpb.AttemptFailed(
            attempt_id=ship_id,
            token=ship_token,
            error_type="Timeout",
            message="carrier down",
            retry_after=duration_pb2.Duration(nanos=1_000_000),
        )
    )
    assert failed.result.accepted
    ship2_id, ship2_token = await scheduled_attempt(database_url, run.id, "ship")
    assert ship2_id != ship_id
    assert (
        await protocol.send(
            started=wpb.AttemptStarted(attempt_id=ship2_id, token=ship2_token, worker_id="w1")
        )
    ).start.accepted
    assert (
        await protocol.send(
            completed=wpb.AttemptCompleted(
                attempt_id=ship2_id, token=ship2_token, output=struct_pb2.Value(bool_value=True)
            )
        )
    ).result.accepted
    protocol.call.cancel()

    final = (await runs.GetRun(run_service_pb2.GetRunRequest(run_id=run.id))).run
    assert final.status == run_pb2.RUN_STATUS_COMPLETED
    assert [len(s.attempts) for s in final.steps] == [1, 2]
    assert final.steps[1].attempts[0].error.type == "Timeout"
    assert dict(final.context)["reserve"] == "held"

    with pytest.raises(aio.AioRpcError) as raised:
        await runs.CancelRun(run_service_pb2.CancelRunRequest(run_id=run.id))
    assert raised.value.code() == StatusCode.FAILED_PRECONDITION

    with pytest.raises(aio.AioRpcError) as raised:
        await runs.ReplayRun(run_service_pb2.ReplayRunRequest(run_id=run.id))
    assert raised.value.code() == StatusCode.FAILED_PRECONDITION
    assert "ship" in (raised.value.details() or "")
    replay = (
        await runs.ReplayRun(
            run_service_pb2.ReplayRunRequest(run_id=run.id, allow_irreversible=True)
        )
    ).run
    assert replay.source_run_id == run.id and replay.id != run.id
    assert replay.workflow_version == run.workflow_version
    assert dict(replay.payload) == dict(run.payload)

    cancelled = (
        await runs.CancelRun(
            run_service_pb2.CancelRunRequest(
                run_id=replay.id, actor="test", reason="no longer needed"
            )
        )
    ).run
    assert cancelled.status == run_pb2.RUN_STATUS_CANCELLED
    again = (await runs.CancelRun(run_service_pb2.CancelRunRequest(run_id=replay.id))).run
    assert again.status == run_pb2.RUN_STATUS_CANCELLED
    cancelled_id, cancelled_token = await scheduled_attempt(database_url, replay.id, "reserve")
    refused = await Protocol(channel).send(
        started=wpb.AttemptStarted(attempt_id=cancelled_id, token=cancelled_token, worker_id="w1")
    )
    assert (refused.start.accepted, refused.start.refusal_reason) == (False, "cancelled")


async def test_list_runs_pages_newest_first(channel: aio.Channel) -> None:
    runs = await register_orders(channel)
    started = [
        (
            await runs.StartRun(
                run_service_pb2.StartRunRequest(workflow="orders", payload=payload(amount=i))
            )
        ).run.id
        for i in range(5)
    ]
    seen: list[str] = []
    token = ""
    while True:
        page = await runs.ListRuns(
            run_service_pb2.ListRunsRequest(workflow="orders", page_size=2, page_token=token)
        )
        seen += [r.id for r in page.runs]
        token = page.next_page_token
        if not token:
            break
    assert seen == list(reversed(started))
    pending = await runs.ListRuns(
        run_service_pb2.ListRunsRequest(statuses=[run_pb2.RUN_STATUS_COMPLETED])
    )
    assert list(pending.runs) == []
    with pytest.raises(aio.AioRpcError) as raised:
        await runs.ListRuns(run_service_pb2.ListRunsRequest(page_token="garbage!"))
    assert raised.value.code() == StatusCode.INVALID_ARGUMENT


async def test_list_runs_basic_view_ships_no_run_data(
    channel: aio.Channel, database_url: str
) -> None:
    """ListRuns' default view has status, times, current steps and the error's reason, but no
    payload, context or error details; RUN_VIEW_FULL adds them. GetRun stays full."""
    runs = await register_orders(channel)
    pending = (
        await runs.StartRun(
            run_service_pb2.StartRunRequest(workflow="orders", payload=payload(amount=1))
        )
    ).run
    protocol = Protocol(channel)
    failing, attempt_id, token = await start_and_claim(channel, database_url, protocol, "w1")
    secret = payload(card="4242")
    failed = wpb.AttemptFailed(
        attempt_id=attempt_id, token=token, message="declined", details=secret, non_retryable=True
    )
    assert (await protocol.send(failed=failed)).result.accepted

    for view in (run_service_pb2.RUN_VIEW_UNSPECIFIED, run_service_pb2.RUN_VIEW_BASIC):
        listed = {
            r.id: r for r in (await runs.ListRuns(run_service_pb2.ListRunsRequest(view=view))).runs
        }
        assert set(listed) == {pending.id, failing.id}
        for run in listed.values():
            assert not run.HasField("payload") and not run.HasField("context")
            assert not run.steps
        assert list(listed[pending.id].current_steps) == ["reserve"]
        bad = listed[failing.id]
        assert bad.status == run_pb2.RUN_STATUS_FAILED
        assert (bad.error.message, bad.error.step) == ("declined", "reserve")
        assert not bad.error.HasField("details")
        assert b"4242" not in bad.SerializeToString()

    full = {
        r.id: r
        for r in (
            await runs.ListRuns(run_service_pb2.ListRunsRequest(view=run_service_pb2.RUN_VIEW_FULL))
        ).runs
    }
    assert dict(full[pending.id].payload) == {"amount": 1, "count": 1}
    assert dict(full[failing.id].error.details)["card"] == "4242"
    assert list(full[pending.id].current_steps) == ["reserve"]
    got = (await runs.GetRun(run_service_pb2.GetRunRequest(run_id=failing.id))).run
    assert dict(got.error.details)["card"] == "4242" and got.steps

    with pytest.raises(aio.AioRpcError) as raised:
        await runs.ListRuns(run_service_pb2.ListRunsRequest(view=7))  # type: ignore[arg-type]
    assert raised.value.code() == StatusCode.INVALID_ARGUMENT


async def test_progress_is_recorded_when_it_changes_at_most_once_a_second(
    channel: aio.Channel, database_url: str
) -> None:
    protocol = Protocol(channel)
    run, attempt_id, token = await start_and_claim(channel, database_url, protocol, "w1")
    runs = RunServiceStub(channel)

    async def beat(**progress: Any) -> None:
        details = payload(**progress) if progress else None
        attempt = wpb.AttemptProgress(attempt_id=attempt_id, token=token, details=details)
        answer = await protocol.send(
            heartbeat=wpb.WorkerHeartbeat(worker_id="w1", attempts=[attempt])
        )
        assert list(answer.heartbeat.lost_attempt_ids) == []

    async def recorded() -> list[dict[str, Any]]:
        return [
            struct_to_dict(e.data)["progress"]
            for e in await run_events(channel, run.id)
            if e.type == run_pb2.RUN_EVENT_TYPE_ATTEMPT_PROGRESS
        ]

    began = time.monotonic()
    await beat(rows=1)
    await beat(rows=1)  # unchanged
    await beat()  # no progress
    await beat(rows=2)  # changed, but within a second of the last one recorded
    within = time.monotonic() - began
    seen = await recorded()
    if within < 1:
        assert seen == [{"rows": 1}]
    await asyncio.sleep(1.05)
    await beat(rows=3)
    assert (await recorded())[-1] == {"rows": 3}
    events = [e for e in await run_events(channel, run.id) if e.step == "reserve"]
    assert events[-1].attempt_number == 1
    got = (await runs.GetRun(run_service_pb2.GetRunRequest(run_id=run.id))).run
    assert struct_to_dict(got.steps[0].attempts[0].progress) == {"rows": 3}


async def test_result_after_cancel_ends_the_run_cancelled(
    channel: aio.Channel, database_url: str
) -> None:
    """A claimed attempt's result arriving after CancelRun does not advance the run (the
    one-statement result path sees the run changed since the claim and steps aside)."""
    protocol = Protocol(channel)
    run, attempt_id, token = await start_and_claim(channel, database_url, protocol, "w1")
    runs = RunServiceStub(channel)

    cancelling = (
        await runs.CancelRun(run_service_pb2.CancelRunRequest(run_id=run.id, reason="stop"))
    ).run
    assert cancelling.status == run_pb2.RUN_STATUS_CANCELLING
    beat = await protocol.send(
        heartbeat=wpb.WorkerHeartbeat(
            worker_id="w1", attempts=[wpb.AttemptProgress(attempt_id=attempt_id, token=token)]
        )
    )
    assert list(beat.heartbeat.cancel_attempt_ids) == [attempt_id]

    done = await protocol.send(
        completed=wpb.AttemptCompleted(
            attempt_id=attempt_id, token=token, output=struct_pb2.Value(string_value="held")
        )
    )
    assert done.result.accepted
    protocol.call.cancel()
    final = (await runs.GetRun(run_service_pb2.GetRunRequest(run_id=run.id))).run
    assert final.status == run_pb2.RUN_STATUS_CANCELLED
    assert [s.name for s in final.steps] == ["reserve"]  # "ship" never scheduled
    assert await count_rows(database_url, "attempts") == 1


async def test_concurrent_starts_with_one_idempotency_key_make_one_run(
    channel: aio.Channel, database_url: str
) -> None:
    runs = await register_orders(channel)
    request = run_service_pb2.StartRunRequest(
        workflow="orders", payload=payload(amount=3), idempotency_key="same"
    )
    responses = await asyncio.gather(*(runs.StartRun(request) for _ in range(8)))
    assert len({r.run.id for r in responses}) == 1
    assert sum(r.created for r in responses) == 1
    assert await count_rows(database_url, "runs") == 1
    assert await count_rows(database_url, "attempts") == 1


async def test_server_side_steps_at_start_and_features_still_refused(
    channel: aio.Channel, database_url: str
) -> None:
    workflows = WorkflowServiceStub(channel)
    runs = RunServiceStub(channel)

    # Only log steps: the run completes inside StartRun, its messages rendered.
    notes = workflow_pb2.WorkflowDefinition(name="notes")
    notes.triggers.add(
        name="manual",
        manual=workflow_pb2.ManualTrigger(),
        payload=[workflow_pb2.PayloadField(name="who", type=workflow_pb2.FIELD_TYPE_STRING)],
    )
    notes.steps.add(name="hello", log=workflow_pb2.LogStep(message="hello {who}"))
    notes.steps.add(name="bye", log=workflow_pb2.LogStep(message="bye {nobody}"))
    notes.transitions.add(from_step="hello", to="bye")
    await workflows.RegisterWorkflow(workflow_service_pb2.RegisterWorkflowRequest(definition=notes))
    started = await runs.StartRun(
        run_service_pb2.StartRunRequest(workflow="notes", payload=payload(who="ann"))
    )
    assert started.run.status == run_pb2.RUN_STATUS_COMPLETED
    run = (await runs.GetRun(run_service_pb2.GetRunRequest(run_id=started.run.id))).run
    assert run.status == run_pb2.RUN_STATUS_COMPLETED and run.HasField("end_time")
    assert [(s.name, s.status, len(s.attempts)) for s in run.steps] == [
        ("hello", run_pb2.STEP_STATUS_COMPLETED, 0),
        ("bye", run_pb2.STEP_STATUS_COMPLETED, 0),
    ]
    assert run.steps[0].output.struct_value.fields["message"].string_value == "hello ann"
    assert run.steps[1].output.struct_value.fields["message"].string_value == "bye {nobody}"

    # A wait first: the run is waiting from the start, on a timer row (no task published).
    pause = workflow_pb2.WorkflowDefinition(name="later")
    pause.triggers.add(name="manual", manual=workflow_pb2.ManualTrigger())
    pause.steps.add(
        name="nap", wait=workflow_pb2.WaitStep(duration=duration_pb2.Duration(seconds=3600))
    )
    await workflows.RegisterWorkflow(workflow_service_pb2.RegisterWorkflowRequest(definition=pause))
    waiting = await runs.StartRun(run_service_pb2.StartRunRequest(workflow="later"))
    assert waiting.run.status == run_pb2.RUN_STATUS_WAITING
    assert [(s.name, s.status) for s in waiting.run.steps] == [("nap", run_pb2.STEP_STATUS_WAITING)]
    got = (await runs.GetRun(run_service_pb2.GetRunRequest(run_id=waiting.run.id))).run
    assert got.status == run_pb2.RUN_STATUS_WAITING
    assert list(got.current_steps) == ["nap"]

    assert await count_rows(database_url, "workflows") == 2


async def test_a_burst_of_starts_is_queued_not_cancelled(
    channel: aio.Channel, database_url: str
) -> None:
    """More StartRuns at once than grpc's default limit of pending calls (1,000, past which it
    cancels new calls at random): every one is served."""
    runs = await register_orders(channel)
    request = run_service_pb2.StartRunRequest(workflow="orders", payload=payload(amount=1))
    burst = 3000
    responses = await asyncio.gather(
        *(runs.StartRun(request) for _ in range(burst)), return_exceptions=True
    )
    failed = [r for r in responses if isinstance(r, BaseException)]
    assert not failed, f"{len(failed)} of {burst} failed, e.g. {failed[0]!r}"
    assert await count_rows(database_url, "runs") == burst


async def test_a_version_registered_on_another_server_is_used_at_once(
    channel: aio.Channel, services: EmbeddedUrls, database_url: str
) -> None:
    """A server starts runs on the latest version it knows without reading it each time; the
    start statement catches a newer one registered by another server, and the run is decided
    again on it (here: its payload checked against the new contract)."""
    runs = await register_orders(channel)
    first = await runs.StartRun(
        run_service_pb2.StartRunRequest(workflow="orders", payload=payload(amount=1))
    )
    assert first.run.workflow_version == 1

    async with (
        running_app(services, database_url) as other,
        aio.insecure_channel(f"127.0.0.1:{other.port}") as other_channel,
    ):
        v2 = definition()
        v2.triggers[0].payload.add(
            name="customer", type=workflow_pb2.FIELD_TYPE_STRING, required=True
        )
        registered = await WorkflowServiceStub(other_channel).RegisterWorkflow(
            workflow_service_pb2.RegisterWorkflowRequest(definition=v2)
        )
        assert registered.workflow.version == 2

    with pytest.raises(aio.AioRpcError) as raised:
        await runs.StartRun(
            run_service_pb2.StartRunRequest(workflow="orders", payload=payload(amount=1))
        )
    assert raised.value.code() == StatusCode.INVALID_ARGUMENT
    assert details(raised.value)[1] == [("payload.customer", "is required")]
    second = await runs.StartRun(
        run_service_pb2.StartRunRequest(
            workflow="orders", payload=payload(amount=1, customer="c-1")
        )
    )
    assert second.run.workflow_version == 2
    assert await count_rows(database_url, "runs") == 2


async def test_requests_sent_as_one_batch_are_each_answered(
    channel: aio.Channel, database_url: str
) -> None:
    runs = await register_orders(channel)
    attempts = []
    for amount in (1, 2):
        run = (
            await runs.StartRun(
                run_service_pb2.StartRunRequest(workflow="orders", payload=payload(amount=amount))
            )
        ).run
        attempts.append(await scheduled_attempt(database_url, run.id, "reserve"))
    workers = WorkerServiceStub(channel)
    registered = await workers.RegisterWorker(
        wpb.RegisterWorkerRequest(
            worker_id="w-batch", queues=["orders"], handlers=["orders.reserve"], concurrency=2
        )
    )
    assert registered.accepts_batches
    call = workers.StreamAttempts(
        metadata=(("squidmesh-worker-id", "w-batch"), ("squidmesh-accepts-batches", "1"))
    )

    async def exchange(
        requests: list[wpb.StreamAttemptsRequest],
    ) -> list[wpb.StreamAttemptsResponse]:
        """Sends `requests` as one message; returns the messages that answer them all."""
        await call.write(wpb.StreamAttemptsRequest(batch=requests))
        messages: list[wpb.StreamAttemptsResponse] = []
        answered: set[int] = set()
        while len(answered) < len(requests):
            message = await call.read()
            assert isinstance(message, wpb.StreamAttemptsResponse)
            messages.append(message)
            answered.update(r.request_id for r in message.batch or (message,))
        assert answered == {r.request_id for r in requests}
        return messages

    claims = await exchange(
        [
            wpb.StreamAttemptsRequest(
                request_id=i + 1,
                started=wpb.AttemptStarted(attempt_id=attempt, token=token, worker_id="w-batch"),
            )
            for i, (attempt, token) in enumerate(attempts)
        ]
    )
    # Claimed in one statement, so answered together, in one message.
    assert len(claims) == 1 and len(claims[0].batch) == 2
    assert all(r.start.accepted and r.start.step == "reserve" for r in claims[0].batch)
    results = await exchange(
        [
            wpb.StreamAttemptsRequest(
                request_id=10 + i,
                completed=wpb.AttemptCompleted(
                    attempt_id=attempt, token=token, output=struct_pb2.Value(string_value="ok")
                ),
            )
            for i, (attempt, token) in enumerate(attempts)
        ]
    )
    assert all(r.result.accepted for m in results for r in m.batch or (m,))
    call.cancel()
    async with await psycopg.AsyncConnection.connect(libpq_url(database_url)) as conn:
        rows = await (
            await conn.execute("SELECT status FROM attempts WHERE step_name = 'reserve'")
        ).fetchall()
    assert [r[0] for r in rows] == ["succeeded", "succeeded"]


async def test_a_failing_run_lets_running_branches_end_then_compensates_them_too(
    channel: aio.Channel, database_url: str
) -> None:
    """a, then b and c in parallel; b fails for good while c runs. The run waits for c before
    compensating; c completes, so it is compensated too, newest first: c, then a."""
    d = workflow_pb2.WorkflowDefinition(name="fanout")
    d.triggers.add(name="manual", manual=workflow_pb2.ManualTrigger())
    d.steps.add(name="a", task=workflow_pb2.TaskStep(handler="h.a"), compensate="h.undo_a")
    d.steps.add(name="b", task=workflow_pb2.TaskStep(handler="h.b"), after=["a"])
    d.steps.add(
        name="c", task=workflow_pb2.TaskStep(handler="h.c"), after=["a"], compensate="h.undo_c"
    )
    await WorkflowServiceStub(channel).RegisterWorkflow(
        workflow_service_pb2.RegisterWorkflowRequest(definition=d)
    )
    runs = RunServiceStub(channel)
    run = (await runs.StartRun(run_service_pb2.StartRunRequest(workflow="fanout"))).run
    protocol = Protocol(channel)

    async def claim(step: str) -> tuple[str, str]:
        attempt, token = await scheduled_attempt(database_url, run.id, step)
        started = await protocol.send(
            started=wpb.AttemptStarted(attempt_id=attempt, token=token, worker_id="w1")
        )
        assert started.start.accepted, (step, started.start.refusal_reason)
        return attempt, token

    async def complete(step: str) -> None:
        attempt, token = await claim(step)
        done = await protocol.send(completed=wpb.AttemptCompleted(attempt_id=attempt, token=token))
        assert done.result.accepted

    async def status() -> tuple[int, list[tuple[str, int]]]:
        got = (await runs.GetRun(run_service_pb2.GetRunRequest(run_id=run.id))).run
        return got.status, [(s.name, s.status) for s in got.steps]

    await complete("a")
    b = await claim("b")
    await claim("c")
    failed = await protocol.send(
        failed=wpb.AttemptFailed(
            attempt_id=b[0], token=b[1], error_type="Boom", message="b broke", non_retryable=True
        )
    )
    assert failed.result.accepted
    run_status, steps = await status()
    assert run_status == run_pb2.RUN_STATUS_COMPENSATING
    assert not [name for name, _ in steps if name.endswith(":compensate")]  # waits for c

    attempt, token = await scheduled_attempt(database_url, run.id, "c")
    done = await protocol.send(completed=wpb.AttemptCompleted(attempt_id=attempt, token=token))
    assert done.result.accepted
    await complete("c:compensate")
    await complete("a:compensate")
    run_status, steps = await status()
    assert run_status == run_pb2.RUN_STATUS_FAILED
    final = (await runs.GetRun(run_service_pb2.GetRunRequest(run_id=run.id))).run
    assert final.error.message == "b broke"
    async with await psycopg.AsyncConnection.connect(libpq_url(database_url)) as conn:
        order = await (
            await conn.execute(
                "SELECT step_name FROM attempts WHERE run_id = %s AND step_name LIKE %s "
                "ORDER BY started_at",
                (run.id, "%:compensate"),
            )
        ).fetchall()
    assert [r[0] for r in order] == ["c:compensate", "a:compensate"]
