"""Child runs against a real server, Postgres and Redis: a handler (driven here through the
worker protocol, as the SDK drives it) starts a child with StartRun(parent_run_id,
parent_step, key); a retried attempt gets the same child; the runs are linked both ways; a
wait_child step resolves when the child ends, whenever that is; refusals write nothing.

The server's reconciler runs once a minute here, so its sweep cannot be what resolves a
wait_child step: the replica that ends a child wakes the parent before it answers."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from google.protobuf import duration_pb2, json_format, struct_pb2
from grpc import StatusCode, aio
from squidmesh.v1 import run_pb2, run_service_pb2, workflow_pb2, workflow_service_pb2
from squidmesh.v1 import worker_service_pb2 as wpb
from squidmesh.v1.run_service_pb2_grpc import RunServiceStub
from squidmesh.v1.workflow_service_pb2_grpc import WorkflowServiceStub

from server.app import App
from server.embedded import EmbeddedUrls
from tests.integration.servers import running_app
from tests.integration.test_api import (
    Protocol,
    count_rows,
    details,
    error_info,
    payload,
    run_events,
    scheduled_attempt,
)

SWEEP_NEVER_MS = 60_000
"""The reconcile interval of these tests' server: longer than any test."""


@pytest_asyncio.fixture
async def app(services: EmbeddedUrls, database_url: str) -> AsyncIterator[App]:
    async with running_app(
        services, database_url, reconcile_interval_ms=SWEEP_NEVER_MS, handoff=False
    ) as app:
        yield app


def child_definition() -> workflow_pb2.WorkflowDefinition:
    """One task step; its `n` is echoed by the handler in these tests."""
    d = workflow_pb2.WorkflowDefinition(name="child")
    d.triggers.add(
        name="manual",
        manual=workflow_pb2.ManualTrigger(),
        payload=[workflow_pb2.PayloadField(name="n", type=workflow_pb2.FIELD_TYPE_INTEGER)],
    )
    d.steps.add(name="work", output_key="worked", task=workflow_pb2.TaskStep(handler="c.work"))
    d.transitions.add(from_step="work", to="complete")
    return d


def parent_definition() -> workflow_pb2.WorkflowDefinition:
    """spawn (starts the child keyed by the payload's `key`) → await_child → after, or
    recover when the child failed."""
    d = workflow_pb2.WorkflowDefinition(name="parent")
    d.triggers.add(
        name="manual",
        manual=workflow_pb2.ManualTrigger(),
        payload=[workflow_pb2.PayloadField(name="key", type=workflow_pb2.FIELD_TYPE_STRING)],
    )
    d.steps.add(
        name="spawn",
        task=workflow_pb2.TaskStep(handler="p.spawn"),
        retry=workflow_pb2.RetryPolicy(
            max_attempts=3,
            backoff=workflow_pb2.BACKOFF_TYPE_FIXED,
            initial_delay=duration_pb2.Duration(nanos=1_000_000),
        ),
    )
    d.steps.add(
        name="await_child",
        output_key="child",
        wait_child=workflow_pb2.WaitChildStep(key="{key}"),
    )
    d.steps.add(name="after", task=workflow_pb2.TaskStep(handler="p.after"))
    d.steps.add(name="recover", task=workflow_pb2.TaskStep(handler="p.recover"))
    d.transitions.add(from_step="spawn", to="await_child")
    d.transitions.add(from_step="await_child", to="after")
    d.transitions.add(from_step="await_child", on=workflow_pb2.OUTCOME_ERROR, to="recover")
    d.transitions.add(from_step="after", to="complete")
    d.transitions.add(from_step="recover", to="complete")
    return d


class Family:
    """The two workflows registered, and the calls a test makes on them."""

    def __init__(self, channel: aio.Channel, database_url: str) -> None:
        self.runs = RunServiceStub(channel)
        self.protocol = Protocol(channel)
        self.database_url = database_url

    async def register(self, channel: aio.Channel) -> None:
        workflows = WorkflowServiceStub(channel)
        for definition in (child_definition(), parent_definition()):
            await workflows.RegisterWorkflow(
                workflow_service_pb2.RegisterWorkflowRequest(definition=definition)
            )

    async def start_parent(self, key: str = "k1") -> str:
        response = await self.runs.StartRun(
            run_service_pb2.StartRunRequest(workflow="parent", payload=payload(key=key))
        )
        return response.run.id

    async def claim(self, run_id: str, step: str) -> tuple[str, str]:
        """Claims the latest attempt of the step: (attempt id, token)."""
        attempt_id, token = await scheduled_attempt(self.database_url, run_id, step)
        started = await self.protocol.send(
            started=wpb.AttemptStarted(attempt_id=attempt_id, token=token, worker_id="w1")
        )
        assert started.start.accepted, started.start.refusal_reason
        return attempt_id, token

    async def complete(self, attempt: tuple[str, str], **output: Any) -> None:
        value = struct_pb2.Value()
        value.struct_value.update(output)
        done = await self.protocol.send(
            completed=wpb.AttemptCompleted(attempt_id=attempt[0], token=attempt[1], output=value)
        )
        assert done.result.accepted, done.result.refusal_reason

    async def fail(self, attempt: tuple[str, str], *, non_retryable: bool = False) -> None:
        failed = await self.protocol.send(
            failed=wpb.AttemptFailed(
                attempt_id=attempt[0],
                token=attempt[1],
                error_type="Boom",
                message="the handler failed",
                non_retryable=non_retryable,
            )
        )
        assert failed.result.accepted, failed.result.refusal_reason

    async def start_child(
        self, parent_id: str, key: str = "k1", n: int = 7, step: str = "spawn"
    ) -> run_service_pb2.StartRunResponse:
        """What a handler's `ctx.start_child_run("child", {"n": n}, key=key)` sends."""
        return await self.runs.StartRun(
            run_service_pb2.StartRunRequest(
                workflow="child",
                payload=payload(n=n),
                idempotency_key=key,
                parent_run_id=parent_id,
                parent_step=step,
            )
        )

    async def get(self, run_id: str) -> run_pb2.Run:
        return (await self.runs.GetRun(run_service_pb2.GetRunRequest(run_id=run_id))).run

    async def list_children(self, parent_id: str) -> list[run_pb2.Run]:
        response = await self.runs.ListRuns(
            run_service_pb2.ListRunsRequest(parent_run_id=parent_id)
        )
        return list(response.runs)


@pytest_asyncio.fixture
async def family(channel: aio.Channel, database_url: str) -> AsyncIterator[Family]:
    family = Family(channel, database_url)
    await family.register(channel)
    yield family
    family.protocol.call.cancel()


def steps(run: run_pb2.Run) -> dict[str, run_pb2.StepRun]:
    return {s.name: s for s in run.steps}


def context(run: run_pb2.Run) -> dict[str, Any]:
    return json_format.MessageToDict(run.context)


async def test_a_retried_attempt_gets_the_same_child_linked_both_ways(
    family: Family, channel: aio.Channel, database_url: str
) -> None:
    parent_id = await family.start_parent()
    first = await family.claim(parent_id, "spawn")
    started = await family.start_child(parent_id)
    assert started.created
    child = started.run
    assert (child.parent_run_id, child.parent_step, child.idempotency_key) == (
        parent_id,
        "spawn",
        "k1",
    )
    await family.fail(first)  # after starting the child: the retry asks again

    second = await family.claim(parent_id, "spawn")
    again = await family.start_child(parent_id)
    assert (again.created, again.run.id) == (False, child.id)
    assert await count_rows(database_url, "runs WHERE parent_run_id IS NOT NULL") == 1

    # The same key for another request of the same parent is refused, as for any key.
    for workflow, n in (("child", 8), ("parent", 7)):
        with pytest.raises(aio.AioRpcError) as raised:
            await family.runs.StartRun(
                run_service_pb2.StartRunRequest(
                    workflow=workflow,
                    payload=payload(n=n) if workflow == "child" else payload(key="k1"),
                    idempotency_key="k1",
                    parent_run_id=parent_id,
                    parent_step="spawn",
                )
            )
        assert raised.value.code() == StatusCode.ALREADY_EXISTS
        assert error_info(raised.value).metadata["run_id"] == child.id
    # Keys are per parent: another parent's child may use the same one.
    other_parent = await family.start_parent()
    assert (await family.start_child(other_parent)).run.id != child.id

    parent = await family.get(parent_id)
    assert [(c.run_id, c.workflow, c.key, c.parent_step) for c in parent.children] == [
        (child.id, "child", "k1", "spawn")
    ]
    assert parent.children[0].status == run_pb2.RUN_STATUS_PENDING
    read_child = await family.get(child.id)
    assert (read_child.parent_run_id, read_child.parent_step) == (parent_id, "spawn")
    assert read_child.idempotency_key == "k1"
    assert not read_child.children
    assert [r.id for r in await family.list_children(parent_id)] == [child.id]
    assert (await family.list_children(parent_id))[0].parent_run_id == parent_id
    assert await family.list_children(str(uuid.uuid4())) == []
    started_events = [
        e
        for e in await run_events(channel, parent_id)
        if e.type == run_pb2.RUN_EVENT_TYPE_CHILD_RUN_STARTED
    ]
    assert len(started_events) == 1
    assert started_events[0].step == "spawn"
    assert json_format.MessageToDict(started_events[0].data) == {
        "run_id": child.id,
        "workflow": "child",
        "key": "k1",
    }

    # The parent reaches its wait_child step first; the child ends after.
    await family.complete(second)
    assert steps(await family.get(parent_id))["await_child"].status == run_pb2.STEP_STATUS_WAITING
    await family.complete(await family.claim(child.id, "work"), n=7)
    # Resolved before the child's result was answered (no sweep runs in this test).
    parent = await family.get(parent_id)
    assert steps(parent)["await_child"].status == run_pb2.STEP_STATUS_COMPLETED
    assert steps(parent)["after"].status == run_pb2.STEP_STATUS_SCHEDULED
    assert context(parent)["child"] == {
        "run_id": child.id,
        "workflow": "child",
        "status": "completed",
        "context": {"n": 7.0, "worked": {"n": 7.0}},
    }
    assert parent.children[0].status == run_pb2.RUN_STATUS_COMPLETED


async def test_a_child_that_ended_before_the_parent_waits_resolves_the_wait_at_once(
    family: Family,
) -> None:
    parent_id = await family.start_parent("early")
    spawn = await family.claim(parent_id, "spawn")
    child = (await family.start_child(parent_id, key="early", n=3)).run
    await family.complete(await family.claim(child.id, "work"), n=3)
    assert (await family.get(child.id)).status == run_pb2.RUN_STATUS_COMPLETED

    await family.complete(spawn)
    parent = await family.get(parent_id)
    assert steps(parent)["await_child"].status == run_pb2.STEP_STATUS_COMPLETED
    assert context(parent)["child"]["status"] == "completed"
    assert context(parent)["child"]["context"]["worked"] == {"n": 3.0}
    await family.complete(await family.claim(parent_id, "after"))
    assert (await family.get(parent_id)).status == run_pb2.RUN_STATUS_COMPLETED


@pytest.mark.parametrize("end", ["failed", "cancelled"])
async def test_a_child_that_fails_or_is_cancelled_fails_the_wait_and_the_error_route_runs(
    family: Family, end: str
) -> None:
    parent_id = await family.start_parent()
    await family.complete(await family.claim(parent_id, "spawn"))
    # The step waits for a key no child has yet: a handler may start it from another step.
    child = (await family.start_child(parent_id)).run
    assert steps(await family.get(parent_id))["await_child"].status == run_pb2.STEP_STATUS_WAITING
    if end == "failed":
        await family.fail(await family.claim(child.id, "work"), non_retryable=True)
    else:
        await family.runs.CancelRun(
            run_service_pb2.CancelRunRequest(run_id=child.id, actor="tester")
        )
    assert (await family.get(child.id)).status == getattr(run_pb2, f"RUN_STATUS_{end.upper()}")

    parent = await family.get(parent_id)
    waited = steps(parent)["await_child"]
    assert waited.status == run_pb2.STEP_STATUS_FAILED
    assert waited.error.reason == "child_run_failed"
    assert json_format.MessageToDict(waited.output)["status"] == end
    assert steps(parent)["recover"].status == run_pb2.STEP_STATUS_SCHEDULED
    assert parent.status not in (run_pb2.RUN_STATUS_FAILED, run_pb2.RUN_STATUS_CANCELLED)


async def test_cancelling_a_parent_leaves_its_children_running(family: Family) -> None:
    parent_id = await family.start_parent()
    await family.claim(parent_id, "spawn")
    child = (await family.start_child(parent_id)).run
    await family.runs.CancelRun(run_service_pb2.CancelRunRequest(run_id=parent_id, actor="tester"))
    assert (await family.get(child.id)).status == run_pb2.RUN_STATUS_PENDING
    await family.complete(await family.claim(child.id, "work"), n=1)
    assert (await family.get(child.id)).status == run_pb2.RUN_STATUS_COMPLETED


async def test_child_starts_that_cannot_apply_are_refused_and_write_nothing(
    family: Family, database_url: str
) -> None:
    parent_id = await family.start_parent()
    await family.complete(await family.claim(parent_id, "spawn"))
    child = (await family.start_child(parent_id)).run
    await family.complete(await family.claim(child.id, "work"), n=1)
    await family.complete(await family.claim(parent_id, "after"))
    parent = await family.get(parent_id)
    assert parent.status == run_pb2.RUN_STATUS_COMPLETED
    runs_before = await count_rows(database_url, "runs")
    events_before = await count_rows(database_url, "run_events")

    def request(**fields: Any) -> run_service_pb2.StartRunRequest:
        base: dict[str, Any] = {
            "workflow": "child",
            "payload": payload(n=1),
            "idempotency_key": "new-key",
            "parent_run_id": parent_id,
            "parent_step": "spawn",
        }
        return run_service_pb2.StartRunRequest(**{**base, **fields})

    cases = [
        (request(), StatusCode.FAILED_PRECONDITION, "RUN_TERMINAL", None),
        (request(idempotency_key=""), StatusCode.INVALID_ARGUMENT, None, "idempotency_key"),
        (request(parent_run_id=str(uuid.uuid4())), StatusCode.NOT_FOUND, "RUN_NOT_FOUND", None),
        (request(parent_run_id="nope"), StatusCode.INVALID_ARGUMENT, None, "parent_run_id"),
        (request(parent_run_id=""), StatusCode.INVALID_ARGUMENT, None, "parent_run_id"),
        (request(parent_step="nowhere"), StatusCode.INVALID_ARGUMENT, None, "parent_step"),
        (request(parent_step=""), StatusCode.INVALID_ARGUMENT, None, "parent_step"),
        # Ordinary runs cannot take a key in the children's namespace.
        (
            request(parent_run_id="", parent_step="", idempotency_key=f"child:{parent_id}/x"),
            StatusCode.INVALID_ARGUMENT,
            None,
            "idempotency_key",
        ),
    ]
    for sent, code, reason, field in cases:
        with pytest.raises(aio.AioRpcError) as raised:
            await family.runs.StartRun(sent)
        assert raised.value.code() == code, sent
        found_reason, violations = details(raised.value)
        if reason is not None:
            assert found_reason == reason
        if field is not None:
            assert [f for f, _ in violations] == [field], sent
    assert await count_rows(database_url, "runs") == runs_before
    assert await count_rows(database_url, "run_events") == events_before
    assert (await family.get(parent_id)).last_sequence == parent.last_sequence

    # The key the parent used while it ran still names its child (a late retry of its step).
    repeated = await family.start_child(parent_id)
    assert (repeated.created, repeated.run.id) == (False, child.id)
