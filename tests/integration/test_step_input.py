"""A step whose input the run context lacks fails before it is dispatched: reason
`input_missing`, every missing input named, no attempt and no handler, and the step's error
route applies as for any failure."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
from google.protobuf import struct_pb2
from grpc import aio
from squidmesh.v1 import run_pb2, run_service_pb2, workflow_service_pb2
from squidmesh.v1 import worker_service_pb2 as wpb
from squidmesh.v1.run_service_pb2_grpc import RunServiceStub
from squidmesh.v1.workflow_service_pb2_grpc import WorkflowServiceStub

from server.store.db import libpq_url
from tests.integration.test_api import Protocol, payload, scheduled_attempt
from worker_sdk import Field, Workflow, struct_to_dict, value_to_python


def handler(input: dict[str, Any]) -> None:
    """Never runs: these tests drive the attempt stream themselves."""


def loader() -> Workflow:
    """load takes a mapped input (two paths); when it fails, recover runs."""
    wf = Workflow("loader")
    wf.trigger("manual", payload=[Field("state_file", "string"), Field("owner", "object")])
    wf.task(name="load", input={"file": "state_file", "who": "owner.name"})(handler)
    wf.task(name="recover")(handler)
    wf.transition("load", "complete")
    wf.transition("load", "recover", on="error")
    wf.transition("recover", "complete")
    return wf


def two_steps() -> Workflow:
    """prepare, then load with a list of keys; no error route."""
    wf = Workflow("two_steps")
    wf.trigger("manual", payload=[Field("state_file", "string")])
    wf.task(name="prepare")(handler)
    wf.task(name="load", input=["region", "state_file"])(handler)
    wf.transition("prepare", "load")
    wf.transition("load", "complete")
    return wf


def branches() -> Workflow:
    """Dependencies: a and b at once (b's input is missing), c after a."""
    wf = Workflow("branches")
    wf.trigger("manual")
    wf.task(name="a")(handler)
    wf.task(name="b", input=["nowhere"])(handler)
    wf.task(name="c", after=["a"])(handler)
    return wf


async def start(channel: aio.Channel, wf: Workflow, **fields: Any) -> run_pb2.Run:
    await WorkflowServiceStub(channel).RegisterWorkflow(
        workflow_service_pb2.RegisterWorkflowRequest(definition=wf.definition())
    )
    request = run_service_pb2.StartRunRequest(workflow=wf.name, payload=payload(**fields))
    return (await RunServiceStub(channel).StartRun(request)).run


async def get(channel: aio.Channel, run_id: str) -> run_pb2.Run:
    request = run_service_pb2.GetRunRequest(run_id=run_id)
    return (await RunServiceStub(channel).GetRun(request)).run


async def attempt_steps(database_url: str, run_id: str) -> list[str]:
    async with await psycopg.AsyncConnection.connect(libpq_url(database_url)) as conn:
        cursor = await conn.execute(
            "SELECT step_name FROM attempts WHERE run_id = %s ORDER BY created_at, step_name",
            (run_id,),
        )
        return [row[0] for row in await cursor.fetchall()]


async def test_a_missing_mapped_input_fails_the_step_and_takes_its_error_route(
    channel: aio.Channel, database_url: str
) -> None:
    run = await start(channel, loader(), owner={"id": 7})
    got = await get(channel, run.id)
    load, recover = got.steps
    assert (load.name, load.status) == ("load", run_pb2.STEP_STATUS_FAILED)
    assert not load.attempts, "a step whose input is missing is never dispatched"
    assert (load.error.reason, load.error.non_retryable) == ("input_missing", True)
    assert struct_to_dict(load.error.details)["missing"] == [
        {"input": "file", "path": "state_file"},
        {"input": "who", "path": "owner.name"},
    ]
    assert "file (path 'state_file')" in load.error.message
    assert (recover.name, recover.status) == ("recover", run_pb2.STEP_STATUS_SCHEDULED)
    assert got.status == run_pb2.RUN_STATUS_PENDING
    assert await attempt_steps(database_url, run.id) == ["recover"]

    # With the inputs present, the same workflow dispatches load with them.
    ok = await start(channel, loader(), state_file="s3://x", owner={"name": "ada"})
    attempt_id, token = await scheduled_attempt(database_url, ok.id, "load")
    claim = wpb.AttemptStarted(attempt_id=attempt_id, token=token, worker_id="w1")
    started = (await Protocol(channel).send(started=claim)).start
    assert started.accepted
    assert value_to_python(started.input) == {"file": "s3://x", "who": "ada"}


async def test_a_missing_key_after_a_step_fails_the_run_without_dispatching(
    channel: aio.Channel, database_url: str
) -> None:
    run = await start(channel, two_steps())
    protocol = Protocol(channel)
    attempt_id, token = await scheduled_attempt(database_url, run.id, "prepare")
    claim = wpb.AttemptStarted(attempt_id=attempt_id, token=token, worker_id="w1")
    assert (await protocol.send(started=claim)).start.accepted
    output = struct_pb2.Value()
    output.struct_value.update({"region": "eu"})
    done = wpb.AttemptCompleted(attempt_id=attempt_id, token=token, output=output)
    assert (await protocol.send(completed=done)).result.accepted

    got = await get(channel, run.id)
    assert got.status == run_pb2.RUN_STATUS_FAILED
    assert (got.error.reason, got.error.step) == ("input_missing", "load")
    assert struct_to_dict(got.error.details)["missing"] == [
        {"input": "state_file", "path": "state_file"}
    ]
    assert await attempt_steps(database_url, run.id) == ["prepare"]


async def test_a_missing_input_among_ready_branches_starts_none_of_them(
    channel: aio.Channel, database_url: str
) -> None:
    run = await start(channel, branches())
    got = await get(channel, run.id)
    assert got.status == run_pb2.RUN_STATUS_FAILED
    assert (got.error.reason, got.error.step) == ("input_missing", "b")
    statuses = {s.name: s.status for s in got.steps}
    assert statuses == {"a": run_pb2.STEP_STATUS_CANCELLED, "b": run_pb2.STEP_STATUS_FAILED}
    assert await attempt_steps(database_url, run.id) == [], "nothing was dispatched"


async def test_a_key_retried_later_returns_its_run_despite_a_now_default(
    channel: aio.Channel,
) -> None:
    """The idempotency of StartRun does not depend on when it is called: a "now" default is
    resolved for the run, but is no part of what the key stands for."""
    wf = Workflow("stamped")
    wf.trigger("manual", payload=[Field("at", "timestamp", default="now"), Field("n", "integer")])
    wf.task(name="only")(handler)
    await WorkflowServiceStub(channel).RegisterWorkflow(
        workflow_service_pb2.RegisterWorkflowRequest(definition=wf.definition())
    )
    runs = RunServiceStub(channel)
    request = run_service_pb2.StartRunRequest(
        workflow="stamped", payload=payload(n=1), idempotency_key="k"
    )
    first = await runs.StartRun(request)
    await asyncio.sleep(0.01)  # "now" moves on
    again = await runs.StartRun(request)
    assert (again.run.id, again.created) == (first.run.id, False)
    assert again.run.payload["at"] == first.run.payload["at"]
