"""Schedules against real Postgres and in-process servers: a definition's cron trigger becomes a
schedule, two replicas fire each tick exactly once, a restart decides every tick it missed, and
new versions move or stop the schedule."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, time, timedelta
from itertools import pairwise
from typing import Any

import psycopg
from google.protobuf import struct_pb2
from grpc import aio
from squidmesh.v1 import run_pb2, run_service_pb2, workflow_pb2, workflow_service_pb2
from squidmesh.v1.run_service_pb2_grpc import RunServiceStub
from squidmesh.v1.workflow_service_pb2_grpc import WorkflowServiceStub

from server.embedded import EmbeddedUrls
from server.engine.schedule_commands import tick_run_id
from server.store.db import libpq_url
from tests.integration.servers import running_app

SCHEDULE = "beat/every_second"


def beat(
    expression: str = "* * * * * *", *, with_trigger: bool = True
) -> workflow_pb2.WorkflowDefinition:
    """A workflow of one log step (its runs end as they start: no overlap, no worker), fired
    by `expression`."""
    d = workflow_pb2.WorkflowDefinition(name="beat")
    d.triggers.add(name="manual", manual=workflow_pb2.ManualTrigger())
    if with_trigger:
        d.triggers.add(
            name="every_second",
            cron=workflow_pb2.CronTrigger(expression=expression),
            payload=[
                workflow_pb2.PayloadField(
                    name="at", type=workflow_pb2.FIELD_TYPE_TIMESTAMP, default_value=_now()
                )
            ],
        )
    d.steps.add(name="note", log=workflow_pb2.LogStep(message="tick at {at}"))
    return d


def _now() -> struct_pb2.Value:
    return struct_pb2.Value(string_value="now")


async def register(channel: aio.Channel, definition: workflow_pb2.WorkflowDefinition) -> None:
    await WorkflowServiceStub(channel).RegisterWorkflow(
        workflow_service_pb2.RegisterWorkflowRequest(definition=definition)
    )


async def rows(database_url: str, query: str, **params: Any) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(libpq_url(database_url)) as conn:
        return await (await conn.execute(query, params)).fetchall()


async def ticks(database_url: str) -> list[tuple[datetime, uuid.UUID | None, str, str]]:
    return [
        (r[0], r[1], r[2], r[3])
        for r in await rows(
            database_url,
            "SELECT nominal_at, run_id, outcome, reason FROM schedule_ticks "
            "WHERE schedule_id = %(id)s ORDER BY nominal_at",
            id=SCHEDULE,
        )
    ]


def assert_contiguous(nominals: list[datetime]) -> None:
    assert nominals, "no tick was decided"
    assert all(b - a == timedelta(seconds=1) for a, b in pairwise(nominals)), nominals


async def test_two_replicas_start_exactly_one_run_per_tick(
    services: EmbeddedUrls, database_url: str
) -> None:
    async with (
        running_app(services, database_url) as first,
        running_app(services, database_url) as second,
    ):
        async with aio.insecure_channel(f"127.0.0.1:{first.port}") as channel:
            await register(channel, beat())
            await asyncio.sleep(5.5)
            decided = await ticks(database_url)
            runs = RunServiceStub(channel)
            listed = await runs.ListRuns(
                run_service_pb2.ListRunsRequest(schedule_id=SCHEDULE, page_size=100)
            )
            sample = (
                await runs.GetRun(run_service_pb2.GetRunRequest(run_id=str(decided[0][1])))
            ).run
            # A replay keeps where its source came from, but is not the tick's run.
            replay = (await runs.ReplayRun(run_service_pb2.ReplayRunRequest(run_id=sample.id))).run
            assert replay.id != sample.id
            assert replay.schedule == sample.schedule
        async with aio.insecure_channel(f"127.0.0.1:{second.port}") as channel:
            # Registering the same content on the other replica changes nothing.
            await register(channel, beat())

    nominals = [t[0] for t in decided]
    assert_contiguous(nominals)
    assert len(nominals) >= 4  # one a second for ~5 s
    assert {t[2] for t in decided} == {"started"}
    # Each tick's run has the id its tick names, and there is no other run of the schedule.
    assert [t[1] for t in decided] == [tick_run_id(SCHEDULE, n) for n in nominals]
    scheduled = await rows(
        database_url,
        "SELECT id, schedule_nominal_at, schedule_origin, status FROM runs "
        "WHERE schedule_id = %(id)s ORDER BY schedule_nominal_at",
        id=SCHEDULE,
    )
    replayed = [r for r in scheduled if str(r[0]) == replay.id]
    ticked = [r for r in scheduled if str(r[0]) != replay.id]
    assert [(r[0], r[1]) for r in ticked][: len(decided)] == [(t[1], t[0]) for t in decided]
    assert {(r[2], r[3]) for r in scheduled} == {("tick", "completed")}
    assert [r[1] for r in replayed] == [nominals[0]]
    assert {r.id for r in listed.runs} >= {str(t[1]) for t in decided}
    assert all(r.schedule.schedule_id == SCHEDULE for r in listed.runs)

    assert sample.schedule.schedule_id == SCHEDULE
    assert sample.schedule.origin == run_pb2.SCHEDULE_RUN_ORIGIN_TICK
    assert sample.schedule.nominal_time.ToDatetime().timestamp() == nominals[0].timestamp()
    lateness = sample.schedule.fire_time.ToDatetime() - sample.schedule.nominal_time.ToDatetime()
    assert timedelta(0) <= lateness < timedelta(seconds=1)
    # The payload's "now" default is the tick's time, not the registration's.
    assert sample.trigger == "every_second"
    assert sample.payload.fields["at"].string_value.startswith(
        nominals[0].strftime("%Y-%m-%dT%H:%M:%S")
    )


async def test_ticks_missed_while_no_server_ran_are_each_decided_once(
    services: EmbeddedUrls, database_url: str
) -> None:
    async with running_app(services, database_url) as app:
        async with aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            await register(channel, beat())
        await asyncio.sleep(2.5)
    await asyncio.sleep(5)  # no server: ~5 ticks missed
    async with running_app(services, database_url):
        await asyncio.sleep(2.5)

    decided = await ticks(database_url)
    assert_contiguous([t[0] for t in decided])  # every second decided, down or not
    missed = [t for t in decided if t[2] == "skipped_missed"]
    assert len(missed) >= 2, decided  # missed-tick policy SKIP (the default): no run for them
    assert all(t[1] is None and "missed while no server ran" in t[3] for t in missed)
    started = [t for t in decided if t[2] == "started"]
    count = await rows(
        database_url, "SELECT count(*) FROM runs WHERE schedule_id = %(id)s", id=SCHEDULE
    )
    assert count == [(len(started),)]


async def test_new_versions_move_and_stop_the_schedule(
    services: EmbeddedUrls, database_url: str
) -> None:
    query = "SELECT cron_expression, state, next_due_at, revision FROM schedules"
    async with (
        running_app(services, database_url) as app,
        aio.insecure_channel(f"127.0.0.1:{app.port}") as channel,
    ):
        await register(channel, beat("0 3 * * *"))
        [(expression, state, due, revision)] = await rows(database_url, query)
        assert (expression, state, revision) == ("0 3 * * *", "active", 1)
        assert due is not None and due.astimezone(UTC).time() == time(3)

        await register(channel, beat())  # a changed expression: followed at once
        [(expression, state, due, revision)] = await rows(database_url, query)
        assert (expression, state, revision) == ("* * * * * *", "active", 2)
        await asyncio.sleep(2.2)
        assert len(await ticks(database_url)) >= 1

        await register(channel, beat(with_trigger=False))  # dropped: stopped
        [(_, state, due, _)] = await rows(database_url, query)
        assert (state, due) == ("stopped", None)
        decided = len(await ticks(database_url))
        await asyncio.sleep(2.2)
        assert len(await ticks(database_url)) == decided

        await register(channel, beat())  # back: ticking again, from now on
        [(_, state, _, _)] = await rows(database_url, query)
        assert state == "active"
