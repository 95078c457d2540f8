"""ScheduleService against a real server, Postgres and Redis: bad input refused with field
details and nothing written, create/get/list, update with an etag, pause and resume without a
burst, trigger now (idempotent), backfill (a tick decided once whoever decides it), preview,
and the overlap policies BUFFER_ONE and CANCEL_OTHER with runs held at a pause step."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, time, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import pytest
from google.protobuf import field_mask_pb2, timestamp_pb2
from grpc import StatusCode, aio
from squidmesh.v1 import (
    history_pb2,
    run_pb2,
    run_service_pb2,
    schedule_pb2,
    workflow_pb2,
)
from squidmesh.v1 import schedule_service_pb2 as spb
from squidmesh.v1.schedule_service_pb2_grpc import ScheduleServiceStub

from server.engine.schedule_commands import tick_run_id
from tests.integration.test_api import count_rows, details, payload
from tests.integration.test_gates import held, manual, refused, register
from tests.integration.test_schedules import beat
from tests.support import wait_for_async

if TYPE_CHECKING:
    from squidmesh.v1.run_service_pb2_grpc import RunServiceAsyncStub
    from squidmesh.v1.schedule_service_pb2_grpc import ScheduleServiceAsyncStub

EVERY_SECOND = schedule_pb2.ScheduleSpec(cron_expression="* * * * * *")


def greeter() -> workflow_pb2.WorkflowDefinition:
    """A manual trigger with a required `name`, and one log step."""
    d = workflow_pb2.WorkflowDefinition(name="greeter")
    manual(
        d,
        workflow_pb2.PayloadField(name="name", type=workflow_pb2.FIELD_TYPE_STRING, required=True),
    )
    d.steps.add(name="hello", log=workflow_pb2.LogStep(message="hello {name}"))
    return d


async def setup(channel: aio.Channel) -> tuple[RunServiceAsyncStub, ScheduleServiceAsyncStub]:
    runs = await register(channel, greeter(), held(), beat("0 3 * * *"))
    return runs, ScheduleServiceStub(channel)


def create(schedule_id: str, workflow: str = "greeter", **fields: Any) -> spb.CreateScheduleRequest:
    fields.setdefault("spec", EVERY_SECOND)
    if workflow == "greeter":
        fields.setdefault("payload", payload(name="ada"))
    return spb.CreateScheduleRequest(schedule_id=schedule_id, workflow=workflow, **fields)


def instant(ts: timestamp_pb2.Timestamp) -> datetime:
    return ts.ToDatetime(tzinfo=UTC)


async def decided(schedules: ScheduleServiceAsyncStub, schedule_id: str) -> list[schedule_pb2.Tick]:
    got = await schedules.GetSchedule(spb.GetScheduleRequest(schedule_id=schedule_id))
    return list(reversed(got.schedule.recent_ticks))  # oldest first


async def test_bad_schedules_are_refused_with_field_details_and_nothing_written(
    channel: aio.Channel, database_url: str
) -> None:
    _, schedules = await setup(channel)
    before = await count_rows(database_url, "schedules")
    with pytest.raises(aio.AioRpcError) as raised:
        await schedules.CreateSchedule(
            create(
                "bad/id",
                spec=schedule_pb2.ScheduleSpec(cron_expression="61 * * * *", time_zone="Mars/Base"),
                payload=payload(name=3),
            )
        )
    assert raised.value.code() == StatusCode.INVALID_ARGUMENT
    reason, violations = details(raised.value)
    assert reason == "INVALID_ARGUMENT"
    assert [field for field, _ in violations] == [
        "schedule_id",
        "spec.cron_expression",
        "spec.time_zone",
    ]
    # The spec is fine, the payload does not fit the trigger's contract: refused now.
    with pytest.raises(aio.AioRpcError) as raised:
        await schedules.CreateSchedule(create("nightly", payload=payload(name=3)))
    assert raised.value.code() == StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in details(raised.value)[1]] == ["payload.name"]
    await refused(
        schedules.CreateSchedule(create("nightly", workflow="nope")),
        StatusCode.NOT_FOUND,
        "WORKFLOW_NOT_FOUND",
    )
    await refused(
        schedules.CreateSchedule(create("nightly", trigger="nope")),
        StatusCode.NOT_FOUND,
        "TRIGGER_NOT_FOUND",
    )
    await refused(
        schedules.CreateSchedule(create("nightly", paused=True)),
        StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    assert await count_rows(database_url, "schedules") == before
    # A definition's schedule is changed by registering, not here.
    await refused(
        schedules.DeleteSchedule(spb.DeleteScheduleRequest(schedule_id="beat/every_second")),
        StatusCode.FAILED_PRECONDITION,
        "SCHEDULE_FROM_DEFINITION",
    )
    await refused(
        schedules.GetSchedule(spb.GetScheduleRequest(schedule_id="nope")),
        StatusCode.NOT_FOUND,
        "SCHEDULE_NOT_FOUND",
    )


async def test_create_tick_get_list_and_update_with_an_etag(
    channel: aio.Channel, database_url: str
) -> None:
    runs, schedules = await setup(channel)
    created = (await schedules.CreateSchedule(create("greet"))).schedule
    assert created.state == schedule_pb2.SCHEDULE_STATE_ACTIVE
    assert created.source == schedule_pb2.SCHEDULE_SOURCE_API
    assert created.trigger == "manual"  # the workflow's default trigger, resolved
    assert len(created.next_ticks) == 5
    await refused(
        schedules.CreateSchedule(create("greet")), StatusCode.ALREADY_EXISTS, "SCHEDULE_EXISTS"
    )

    async def ticked(count: int) -> bool:
        return len(await decided(schedules, "greet")) >= count

    await wait_for_async(lambda: ticked(2), 30, "two ticks of greet")
    got = (await schedules.GetSchedule(spb.GetScheduleRequest(schedule_id="greet"))).schedule
    assert got.health == schedule_pb2.SCHEDULE_HEALTH_OK
    tick = got.recent_ticks[-1]
    assert tick.outcome == schedule_pb2.TICK_OUTCOME_STARTED
    assert tick.origin == run_pb2.SCHEDULE_RUN_ORIGIN_TICK
    assert tick.run_id == str(tick_run_id("greet", instant(tick.nominal_time)))
    run = (await runs.GetRun(run_service_pb2.GetRunRequest(run_id=tick.run_id))).run
    assert run.schedule.schedule_id == "greet"
    assert run.payload.fields["name"].string_value == "ada"
    listed = await runs.ListRuns(run_service_pb2.ListRunsRequest(schedule_id="greet"))
    assert tick.run_id in {r.id for r in listed.runs}

    page = await schedules.ListSchedules(spb.ListSchedulesRequest(page_size=1))
    assert [s.id for s in page.schedules] == ["beat/every_second"]
    rest = await schedules.ListSchedules(
        spb.ListSchedulesRequest(page_size=1, page_token=page.next_page_token)
    )
    assert [s.id for s in rest.schedules] == ["greet"]
    active = await schedules.ListSchedules(
        spb.ListSchedulesRequest(workflow="greeter", states=[schedule_pb2.SCHEDULE_STATE_PAUSED])
    )
    assert list(active.schedules) == []

    # An update with a stale etag is refused; with the current one it applies.
    change = schedule_pb2.Schedule(
        id="greet",
        payload=payload(name="grace"),
        spec=schedule_pb2.ScheduleSpec(cron_expression="0 3 * * *", time_zone="Europe/Paris"),
    )
    mask = field_mask_pb2.FieldMask(paths=["payload", "spec"])
    await refused(
        schedules.UpdateSchedule(
            spb.UpdateScheduleRequest(schedule=change, update_mask=mask, etag="999")
        ),
        StatusCode.ABORTED,
        "ETAG_MISMATCH",
    )
    await refused(
        schedules.UpdateSchedule(
            spb.UpdateScheduleRequest(
                schedule=change, update_mask=field_mask_pb2.FieldMask(paths=["state"])
            )
        ),
        StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    updated = (
        await schedules.UpdateSchedule(
            spb.UpdateScheduleRequest(schedule=change, update_mask=mask, etag=got.etag)
        )
    ).schedule
    assert updated.etag != got.etag
    assert updated.spec.time_zone == "Europe/Paris"
    assert updated.payload.fields["name"].string_value == "grace"
    assert updated.overlap_policy == created.overlap_policy  # not in the mask: kept
    first = instant(updated.next_ticks[0].nominal_time)
    assert first.astimezone(ZoneInfo("Europe/Paris")).time() == time(3)

    await schedules.DeleteSchedule(
        spb.DeleteScheduleRequest(schedule_id="greet", etag=updated.etag)
    )
    await refused(
        schedules.GetSchedule(spb.GetScheduleRequest(schedule_id="greet")),
        StatusCode.NOT_FOUND,
        "SCHEDULE_NOT_FOUND",
    )
    # Its ticks stay in history (and their runs).
    assert await count_rows(database_url, "schedule_ticks") >= 2


async def test_pause_stops_ticks_and_resume_starts_again_without_a_burst(
    channel: aio.Channel,
) -> None:
    _, schedules = await setup(channel)
    await schedules.CreateSchedule(create("greet"))

    async def ticked() -> bool:
        return len(await decided(schedules, "greet")) >= 1

    await wait_for_async(ticked, 30, "a tick of greet")
    await refused(
        schedules.PauseSchedule(spb.PauseScheduleRequest(schedule_id="greet")),
        StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    paused = (
        await schedules.PauseSchedule(
            spb.PauseScheduleRequest(schedule_id="greet", actor="ops", note="maintenance")
        )
    ).schedule
    assert (paused.state, paused.paused_by, paused.pause_note) == (
        schedule_pb2.SCHEDULE_STATE_PAUSED,
        "ops",
        "maintenance",
    )
    assert list(paused.next_ticks) == []
    before = await decided(schedules, "greet")
    paused_at = datetime.now(UTC)
    await asyncio.sleep(3)  # three ticks' worth of time while paused
    assert await decided(schedules, "greet") == before
    resumed = (
        await schedules.ResumeSchedule(spb.ResumeScheduleRequest(schedule_id="greet", actor="ops"))
    ).schedule
    assert resumed.state == schedule_pb2.SCHEDULE_STATE_ACTIVE
    assert resumed.pause_note == ""
    resumed_at = datetime.now(UTC)

    async def ticked_again() -> bool:
        return len(await decided(schedules, "greet")) > len(before) + 1

    await wait_for_async(ticked_again, 30, "a tick after resume")
    after = (await decided(schedules, "greet"))[len(before) :]
    # The paused interval is one recorded decision, on its first tick; nothing ran for it.
    skipped, ran = after[0], after[1:]
    assert skipped.outcome == schedule_pb2.TICK_OUTCOME_SKIPPED_PAUSED
    assert paused_at < instant(skipped.nominal_time) < resumed_at
    assert skipped.run_id == ""
    assert "paused by ops (maintenance)" in skipped.reason
    # No burst: the first tick that runs is after the resume.
    assert ran, after
    assert all(instant(t.nominal_time) > resumed_at - timedelta(seconds=1) for t in ran)
    assert {t.outcome for t in ran} == {schedule_pb2.TICK_OUTCOME_STARTED}


async def test_trigger_now_and_backfill_decide_each_tick_once(
    channel: aio.Channel, database_url: str
) -> None:
    runs, schedules = await setup(channel)
    await schedules.CreateSchedule(create("greet", paused=True, actor="ops"))
    triggered = await schedules.TriggerSchedule(
        spb.TriggerScheduleRequest(schedule_id="greet", actor="ops", idempotency_key="k1")
    )
    assert triggered.run.schedule.origin == run_pb2.SCHEDULE_RUN_ORIGIN_MANUAL
    assert triggered.tick.run_id == triggered.run.id
    assert triggered.tick.reason == "triggered by ops"
    again = await schedules.TriggerSchedule(
        spb.TriggerScheduleRequest(schedule_id="greet", actor="ops", idempotency_key="k1")
    )
    assert again.run.id == triggered.run.id
    assert again.tick.nominal_time == triggered.tick.nominal_time

    # A past range of a paused schedule: every second of it starts a run, once.
    now = datetime.now(UTC).replace(microsecond=0)
    start, end = timestamp_pb2.Timestamp(), timestamp_pb2.Timestamp()
    start.FromDatetime(now - timedelta(seconds=10))
    end.FromDatetime(now - timedelta(seconds=6))
    request = spb.BackfillScheduleRequest(
        schedule_id="greet", start_time=start, end_time=end, actor="ops"
    )
    first = await schedules.BackfillSchedule(request)
    assert first.started == 5
    assert [t.origin for t in first.ticks] == [run_pb2.SCHEDULE_RUN_ORIGIN_BACKFILL] * 5
    assert [t.run_id for t in first.ticks] == [
        str(tick_run_id("greet", instant(t.nominal_time))) for t in first.ticks
    ]
    second = await schedules.BackfillSchedule(request)
    assert second.started == 0
    assert [t.run_id for t in second.ticks] == [t.run_id for t in first.ticks]
    assert (
        await count_rows(database_url, "runs WHERE schedule_id = 'greet'")
    ) == 6  # five backfilled, one triggered
    backfilled = (
        await runs.GetRun(run_service_pb2.GetRunRequest(run_id=first.ticks[0].run_id))
    ).run
    assert backfilled.schedule.origin == run_pb2.SCHEDULE_RUN_ORIGIN_BACKFILL

    future = timestamp_pb2.Timestamp()
    future.FromDatetime(now + timedelta(hours=1))
    with pytest.raises(aio.AioRpcError) as raised:
        await schedules.BackfillSchedule(
            spb.BackfillScheduleRequest(schedule_id="greet", start_time=start, end_time=future)
        )
    assert raised.value.code() == StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in details(raised.value)[1]] == ["actor"]
    with pytest.raises(aio.AioRpcError) as raised:
        await schedules.BackfillSchedule(
            spb.BackfillScheduleRequest(
                schedule_id="greet", start_time=start, end_time=future, actor="ops"
            )
        )
    assert [f for f, _ in details(raised.value)[1]] == ["end_time"]


async def test_preview_a_spec_across_a_dst_change(channel: aio.Channel) -> None:
    _, schedules = await setup(channel)
    after = timestamp_pb2.Timestamp()
    after.FromDatetime(datetime(2026, 3, 7, 12, tzinfo=UTC))
    preview = await schedules.PreviewSchedule(
        spb.PreviewScheduleRequest(
            spec=schedule_pb2.ScheduleSpec(
                cron_expression="30 2 * * *", time_zone="America/New_York"
            ),
            count=3,
            after=after,
        )
    )
    # 2026-03-08 02:30 does not exist in New York: it fires at the end of the gap (03:00 EDT).
    assert [instant(t.nominal_time).isoformat() for t in preview.ticks] == [
        "2026-03-08T07:00:00+00:00",
        "2026-03-09T06:30:00+00:00",
        "2026-03-10T06:30:00+00:00",
    ]
    saved = await schedules.PreviewSchedule(
        spb.PreviewScheduleRequest(schedule_id="beat/every_second", count=2, after=after)
    )
    assert [instant(t.nominal_time).isoformat() for t in saved.ticks] == [
        "2026-03-08T03:00:00+00:00",
        "2026-03-09T03:00:00+00:00",
    ]
    await refused(
        schedules.PreviewSchedule(spb.PreviewScheduleRequest()),
        StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    await refused(
        schedules.PreviewSchedule(
            spb.PreviewScheduleRequest(spec=schedule_pb2.ScheduleSpec(cron_expression="nope"))
        ),
        StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )


async def resume_all(runs: RunServiceAsyncStub, run_id: str) -> None:
    await runs.ResumeRun(run_service_pb2.ResumeRunRequest(run_id=run_id, actor="ops"))


async def test_buffer_one_starts_one_held_tick_after_the_active_run(
    channel: aio.Channel,
) -> None:
    runs, schedules = await setup(channel)
    await schedules.CreateSchedule(
        create("hold", workflow="held", overlap_policy=workflow_pb2.OVERLAP_POLICY_BUFFER_ONE)
    )

    async def overlapped() -> bool:
        ticks = await decided(schedules, "hold")
        return any(t.outcome == schedule_pb2.TICK_OUTCOME_SKIPPED_OVERLAP for t in ticks)

    await wait_for_async(overlapped, 30, "a tick skipped for overlap")
    got = (await schedules.GetSchedule(spb.GetScheduleRequest(schedule_id="hold"))).schedule
    started = [t for t in got.recent_ticks if t.outcome == schedule_pb2.TICK_OUTCOME_STARTED]
    assert len(started) == 1  # the first run holds at its pause step
    assert got.HasField("buffered_tick")
    held_nominal = instant(got.buffered_tick.nominal_time)
    assert held_nominal > instant(started[0].nominal_time)
    skipped = [
        t for t in got.recent_ticks if t.outcome == schedule_pb2.TICK_OUTCOME_SKIPPED_OVERLAP
    ]
    assert all("already buffered" in t.reason for t in skipped)

    await resume_all(runs, started[0].run_id)

    async def released() -> bool:
        ticks = await decided(schedules, "hold")
        return any(instant(t.nominal_time) == held_nominal for t in ticks)

    await wait_for_async(released, 30, "the buffered tick started")
    ticks = await decided(schedules, "hold")
    buffered = next(t for t in ticks if instant(t.nominal_time) == held_nominal)
    assert buffered.outcome == schedule_pb2.TICK_OUTCOME_STARTED
    assert buffered.run_id == str(tick_run_id("hold", held_nominal))
    # It started after the nominal ticks that were skipped meanwhile, and only it did.
    assert instant(buffered.fire_time) > max(instant(t.nominal_time) for t in skipped)
    assert [t.run_id for t in ticks if t.outcome == schedule_pb2.TICK_OUTCOME_STARTED] == [
        started[0].run_id,
        buffered.run_id,
    ]


async def test_cancel_other_cancels_the_active_run_for_the_new_tick(
    channel: aio.Channel,
) -> None:
    runs, schedules = await setup(channel)
    await schedules.CreateSchedule(
        create("hold", workflow="held", overlap_policy=workflow_pb2.OVERLAP_POLICY_CANCEL_OTHER)
    )

    async def two_started() -> bool:
        ticks = await decided(schedules, "hold")
        return len([t for t in ticks if t.outcome == schedule_pb2.TICK_OUTCOME_STARTED]) >= 2

    await wait_for_async(two_started, 30, "two ticks started")
    first = (await decided(schedules, "hold"))[0]

    async def cancelled() -> bool:
        run = (await runs.GetRun(run_service_pb2.GetRunRequest(run_id=first.run_id))).run
        return run.status == run_pb2.RUN_STATUS_CANCELLED

    await wait_for_async(cancelled, 30, "the first run cancelled")
    history = await runs.GetRunHistory(run_service_pb2.GetRunHistoryRequest(run_id=first.run_id))
    commands = [e.command for e in history.entries if e.HasField("command")]
    assert [c.actor for c in commands if c.type == history_pb2.COMMAND_TYPE_CANCEL] == [
        "squidmesh:schedule:hold"
    ]
