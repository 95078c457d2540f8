"""Fuzzing WorkflowService and RunService: every RPC gets hostile requests (odd text, NULs,
extreme numbers, unknown enums, bad durations, timestamps and page tokens, deep and huge
values) and undecodable bytes. Each is answered with a clear status and a refusal writes
nothing; an accepted run can be read back; afterwards the server is healthy and completes a
run. The SDK clients get the same treatment through their Python arguments."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from google.protobuf import timestamp_pb2
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from grpc import aio
from hypothesis import strategies as st
from squidmesh.v1 import (
    run_service_pb2,
    schedule_pb2,
    schedule_service_pb2,
    workflow_pb2,
    workflow_service_pb2,
)

from tests.integration.fuzz import hostile
from tests.integration.fuzz.harness import (
    RUN_METHODS,
    SCHEDULE_METHODS,
    WORKFLOW_METHODS,
    Rows,
    assert_still_serves,
    call,
    every_type,
    fuzz,
    path,
    refused_cleanly,
    register,
)
from tests.integration.test_api import definition, payload


async def test_workflow_service_answers_hostile_requests_clearly(
    fuzz_channel: aio.Channel, database_url: str, rows: Rows
) -> None:
    await register(fuzz_channel, definition(), definition("other"))
    page = await call(
        fuzz_channel,
        WORKFLOW_METHODS["ListWorkflows"],
        workflow_service_pb2.ListWorkflowsRequest(page_size=1),
    )
    known = {
        "name": st.sampled_from(["orders", "other", "fuzzed"]),
        "page_token": st.one_of(st.just(page.next_page_token), hostile.page_tokens()),
    }
    templates = [
        workflow_service_pb2.RegisterWorkflowRequest(definition=definition("fuzzed")),
        workflow_service_pb2.GetWorkflowRequest(name="orders"),
        workflow_service_pb2.ListWorkflowsRequest(page_size=1),
    ]
    examples = st.one_of(
        *(
            st.tuples(st.just(name), hostile.requests(t, known))
            for name, t in zip(WORKFLOW_METHODS, templates, strict=True)
        )
    )

    async def check(example: tuple[str, Message]) -> None:
        method, request = example
        await refused_cleanly(
            rows, lambda: call(fuzz_channel, WORKFLOW_METHODS[method], request), example
        )

    await fuzz(examples, check, examples=200)
    await assert_still_serves(fuzz_channel, database_url)


async def test_run_service_answers_hostile_requests_clearly(
    fuzz_channel: aio.Channel, database_url: str, rows: Rows
) -> None:
    await register(fuzz_channel, definition(), every_type())
    runs = [
        (await call(fuzz_channel, RUN_METHODS["StartRun"], request)).run
        for request in (
            run_service_pb2.StartRunRequest(workflow="orders", payload=payload(amount=5)),
            run_service_pb2.StartRunRequest(workflow="orders", payload=payload(amount=6)),
            run_service_pb2.StartRunRequest(
                workflow="orders", payload=payload(amount=7), idempotency_key="seven"
            ),
        )
    ]
    page = await call(
        fuzz_channel, RUN_METHODS["ListRuns"], run_service_pb2.ListRunsRequest(page_size=1)
    )
    run_id = runs[0].id
    known = {
        "workflow": st.sampled_from(["orders", "bags"]),
        "trigger": st.sampled_from(["", "manual", "import"]),
        "idempotency_key": st.sampled_from(["", "seven"]),
        "parent_step": st.sampled_from(["", "reserve", "ship"]),
        "parent_run_id": st.one_of(st.sampled_from([r.id for r in runs]), st.uuids().map(str)),
        "run_id": st.one_of(
            st.sampled_from([r.id for r in runs]),
            st.sampled_from([run_id.upper(), "{" + run_id + "}", run_id.replace("-", "")]),
            st.uuids().map(str),
        ),
        "page_token": st.one_of(st.just(page.next_page_token), hostile.page_tokens()),
    }
    templates: list[Message] = [
        run_service_pb2.StartRunRequest(workflow="orders", payload=payload(amount=1)),
        run_service_pb2.GetRunRequest(run_id=run_id),
        run_service_pb2.ListRunsRequest(workflow="orders", page_size=2),
        run_service_pb2.WatchRunRequest(run_id=run_id),
        run_service_pb2.CancelRunRequest(run_id=runs[1].id, actor="fuzz"),
        run_service_pb2.ReplayRunRequest(run_id=run_id),
        run_service_pb2.ResumeRunRequest(run_id=run_id, actor="fuzz"),
        run_service_pb2.ApproveStepRequest(run_id=run_id, actor="fuzz", payload=payload(a=1)),
        run_service_pb2.RejectStepRequest(run_id=run_id, actor="fuzz", comment="no"),
        run_service_pb2.PublishEventRequest(
            name="fuzz.event", correlation_key="k", payload=payload(a=1), event_id="e"
        ),
        run_service_pb2.ExplainRunRequest(run_id=run_id),
        run_service_pb2.GetRunHistoryRequest(run_id=run_id, page_size=2),
    ]
    child = run_service_pb2.StartRunRequest(
        workflow="orders",
        payload=payload(amount=1),
        idempotency_key="child-1",
        parent_run_id=runs[2].id,
        parent_step="reserve",
    )
    examples = st.one_of(
        *(
            st.tuples(st.just(name), hostile.requests(t, known))
            for name, t in [*zip(RUN_METHODS, templates, strict=True), ("StartRun", child)]
        )
    )

    async def check(example: tuple[str, Message]) -> None:
        method, request = example
        answer = await refused_cleanly(
            rows, lambda: call(fuzz_channel, RUN_METHODS[method], request), example
        )
        if isinstance(answer, run_service_pb2.StartRunResponse) and answer.created:
            await readable(fuzz_channel, answer.run.id)

    await fuzz(examples, check, examples=250)
    await assert_still_serves(fuzz_channel, database_url)


async def test_schedule_service_answers_hostile_requests_clearly(
    fuzz_channel: aio.Channel, database_url: str, rows: Rows
) -> None:
    """Every spec a template or `known` offers is rare (yearly), so that no tick writes rows
    while an example checks that a refusal wrote none."""
    yearly = definition("yearly")
    yearly.triggers.add(name="nightly", cron=workflow_pb2.CronTrigger(expression="0 3 1 1 *"))
    await register(fuzz_channel, definition(), yearly)
    spec = schedule_pb2.ScheduleSpec(cron_expression="0 3 1 1 *", time_zone="Europe/Paris")
    created = await call(
        fuzz_channel,
        SCHEDULE_METHODS["CreateSchedule"],
        schedule_service_pb2.CreateScheduleRequest(
            schedule_id="rare", workflow="orders", payload=payload(amount=1), spec=spec
        ),
    )
    ids = ["rare", "yearly/nightly", "missing", "yearly/"]
    known = {
        "schedule_id": st.sampled_from(ids),
        "id": st.sampled_from(ids),
        "workflow": st.sampled_from(["orders", "yearly", ""]),
        "trigger": st.sampled_from(["", "manual", "nightly"]),
        "cron_expression": st.sampled_from(["0 3 1 1 *", "@yearly", "0 0 3 1 1 *", "61 * * *"]),
        "time_zone": st.sampled_from(["", "UTC", "Europe/Paris", "Mars/Base", "../etc"]),
        "etag": st.sampled_from(["", created.schedule.etag, "0"]),
        "paths": st.sampled_from(["payload", "spec", "state", "overlap_policy", ""]),
        "page_token": hostile.page_tokens(),
    }
    templates: list[Message] = [
        schedule_service_pb2.CreateScheduleRequest(
            schedule_id="fuzzed", workflow="orders", payload=payload(amount=2), spec=spec
        ),
        schedule_service_pb2.GetScheduleRequest(schedule_id="rare"),
        schedule_service_pb2.ListSchedulesRequest(workflow="orders", page_size=1),
        schedule_service_pb2.UpdateScheduleRequest(
            schedule=schedule_pb2.Schedule(id="rare", payload=payload(amount=3), spec=spec),
            etag=created.schedule.etag,
        ),
        schedule_service_pb2.DeleteScheduleRequest(schedule_id="missing"),
        schedule_service_pb2.PauseScheduleRequest(schedule_id="rare", actor="fuzz", note="n"),
        schedule_service_pb2.ResumeScheduleRequest(schedule_id="rare", actor="fuzz"),
        schedule_service_pb2.TriggerScheduleRequest(schedule_id="rare", actor="fuzz"),
        schedule_service_pb2.BackfillScheduleRequest(
            schedule_id="yearly/nightly",
            actor="fuzz",
            start_time=spec_time(2020),
            end_time=spec_time(2024),
        ),
        schedule_service_pb2.PreviewScheduleRequest(spec=spec, count=3),
    ]
    examples = st.one_of(
        *(
            st.tuples(st.just(name), hostile.requests(t, known))
            for name, t in zip(SCHEDULE_METHODS, templates, strict=True)
        )
    )

    async def check(example: tuple[str, Message]) -> None:
        method, request = example
        await refused_cleanly(
            rows, lambda: call(fuzz_channel, SCHEDULE_METHODS[method], request), example
        )

    await fuzz(examples, check, examples=200)
    await assert_still_serves(fuzz_channel, database_url)


def spec_time(year: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=int(datetime(year, 1, 1, tzinfo=UTC).timestamp()))


async def readable(channel: aio.Channel, run_id: str) -> None:
    """An accepted run can be sent back: by GetRun, ListRuns (full view) and WatchRun."""
    got = await call(channel, RUN_METHODS["GetRun"], run_service_pb2.GetRunRequest(run_id=run_id))
    assert got.run.id == run_id
    listed = await call(
        channel,
        RUN_METHODS["ListRuns"],
        run_service_pb2.ListRunsRequest(page_size=1, view=run_service_pb2.RUN_VIEW_FULL),
    )
    assert listed.runs[0].id == run_id
    watched = await call(
        channel, RUN_METHODS["WatchRun"], run_service_pb2.WatchRunRequest(run_id=run_id)
    )
    assert watched.snapshot.id == run_id


async def test_payload_values_are_refused_or_stored_and_sent_back(
    fuzz_channel: aio.Channel, database_url: str, rows: Rows
) -> None:
    await register(fuzz_channel, every_type())
    field = st.sampled_from(["string", "integer", "number", "object", "list", "timestamp", "new"])
    examples = st.tuples(field, hostile.payload_values())

    async def check(example: tuple[str, Any]) -> None:
        name, value = example
        request = run_service_pb2.StartRunRequest(workflow="bags")
        request.payload.update({name: value})  # in place: deep values cannot be copied
        answer = await refused_cleanly(
            rows, lambda: call(fuzz_channel, RUN_METHODS["StartRun"], request), example
        )
        if answer is not None:
            await readable(fuzz_channel, answer.run.id)

    await fuzz(examples, check, examples=120)
    await assert_still_serves(fuzz_channel, database_url)


async def test_undecodable_bytes_to_every_rpc_are_invalid_argument(
    fuzz_channel: aio.Channel, database_url: str, rows: Rows
) -> None:
    await register(fuzz_channel, definition())
    methods = {
        path(m): m
        for m in (*WORKFLOW_METHODS.values(), *RUN_METHODS.values(), *SCHEDULE_METHODS.values())
    }
    examples = st.sampled_from(sorted(methods)).flatmap(
        lambda p: st.tuples(st.just(p), hostile.garbage(_valid_bytes(methods[p])))
    )

    async def check(example: tuple[str, bytes]) -> None:
        method, data = example
        await refused_cleanly(rows, lambda: call(fuzz_channel, methods[method], data), example)

    await fuzz(examples, check, examples=150)
    await assert_still_serves(fuzz_channel, database_url)


def _valid_bytes(method: MethodDescriptor) -> bytes:
    """A readable request of the method, for garbage to cut short or append to."""
    request = GetMessageClass(method.input_type)()
    for name, value in [("workflow", "orders"), ("name", "orders"), ("run_id", str(uuid.uuid4()))]:
        if name in request.DESCRIPTOR.fields_by_name:
            setattr(request, name, value)
    return request.SerializeToString()
