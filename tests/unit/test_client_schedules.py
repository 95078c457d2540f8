"""The schedule calls of the Python client: their requests carry every argument, bad arguments
are a clear TypeError/ValueError before any call, and only the calls safe to repeat are
repeated while the server is unavailable.

The clients point at a port nothing listens on: an argument that got as far as a call would
raise grpc.RpcError (UNAVAILABLE) instead of the error these tests expect."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from squidmesh.client import AsyncClient, Client, schedule_spec, schedule_state
from squidmesh.requests import _build
from squidmesh.retries import CHANNEL_OPTIONS
from squidmesh.schedule_requests import _build_schedules
from squidmesh.v1 import schedule_pb2, schedule_service_pb2, workflow_pb2

from tests.support import free_port

PARIS = timezone(timedelta(hours=1))


@pytest.fixture
def client() -> Iterator[Client]:
    with Client(f"127.0.0.1:{free_port()}", timeout=5) as c:
        yield c


def test_a_spec_carries_every_option() -> None:
    spec = schedule_spec(
        "0 3 * * *",
        time_zone="Europe/Paris",
        start_time=datetime(2026, 3, 1, tzinfo=PARIS),
        end_time=datetime(2026, 12, 1, tzinfo=UTC),
        jitter=timedelta(seconds=90),
        skipped_time="skip",
        repeated_time="last",
    )
    assert spec.cron_expression == "0 3 * * *" and spec.time_zone == "Europe/Paris"
    assert spec.start_time.ToDatetime(UTC) == datetime(2026, 2, 28, 23, tzinfo=UTC)
    assert spec.end_time.ToDatetime(UTC) == datetime(2026, 12, 1, tzinfo=UTC)
    assert spec.jitter == duration_pb2.Duration(seconds=90)
    assert spec.skipped_time_policy == workflow_pb2.SKIPPED_TIME_POLICY_SKIP
    assert spec.repeated_time_policy == workflow_pb2.REPEATED_TIME_POLICY_LAST
    bare = schedule_spec("@hourly")
    assert bare == schedule_pb2.ScheduleSpec(cron_expression="@hourly")  # the server's defaults


def test_create_schedule_request_carries_every_argument() -> None:
    request = _build_schedules.create_schedule(
        "nightly-payment",
        "payment",
        schedule_spec("0 3 * * *", time_zone="Europe/Paris"),
        "nightly",
        {"amount": 5},
        timedelta(hours=2),
        "run_all",
        4,
        "allow_all",
        True,
        "ada",
    )
    assert (request.schedule_id, request.workflow, request.trigger) == (
        "nightly-payment",
        "payment",
        "nightly",
    )
    assert request.payload["amount"] == 5 and request.spec.time_zone == "Europe/Paris"
    assert request.catchup_window == duration_pb2.Duration(seconds=7200)
    assert request.missed_tick_policy == workflow_pb2.MISSED_TICK_POLICY_RUN_ALL
    assert request.max_catchup_runs == 4
    assert request.overlap_policy == workflow_pb2.OVERLAP_POLICY_ALLOW_ALL
    assert request.paused and request.actor == "ada"
    # A bare expression is a spec in UTC; no payload is an empty one; no policy: the defaults.
    plain = _build_schedules.create_schedule(
        "s", "w", "*/5 * * * *", "", None, None, None, 0, None, False, ""
    )
    assert plain.spec == schedule_pb2.ScheduleSpec(cron_expression="*/5 * * * *")
    assert plain.HasField("payload") and not plain.payload.fields
    assert not plain.HasField("catchup_window")
    assert plain.missed_tick_policy == workflow_pb2.MISSED_TICK_POLICY_UNSPECIFIED
    assert plain.overlap_policy == workflow_pb2.OVERLAP_POLICY_UNSPECIFIED


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"spec": 5}, TypeError, "a spec is a cron expression or a ScheduleSpec"),
        ({"spec": ""}, ValueError, "^empty cron expression$"),
        ({"schedule_id": ""}, ValueError, "^schedule_id is required$"),
        ({"workflow": " "}, ValueError, "^workflow is required$"),
        ({"payload": [1]}, TypeError, "^payload must be a JSON object, not a list$"),
        ({"overlap": "queue"}, ValueError, "^overlap 'queue' is not one of: skip, buffer_one, "),
        ({"missed_ticks": "all"}, ValueError, "^missed_ticks 'all' is not one of: skip, "),
        ({"max_catchup_runs": 3}, ValueError, "^max_catchup_runs goes with missed_ticks='run_all'"),
        ({"catchup_window": -5}, ValueError, "^catchup_window: a duration must be a finite"),
    ],
)
def test_create_schedule_checks_its_arguments(
    client: Client, arguments: dict[str, Any], error: type[Exception], message: str
) -> None:
    given: dict[str, Any] = {"schedule_id": "s", "workflow": "w", "spec": "@daily"}
    given.update(arguments)
    with pytest.raises(error, match=message):
        client.create_schedule(**given)


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"start_time": datetime(2026, 1, 1)}, ValueError, "^start_time must be timezone-aware"),
        ({"end_time": 1767225600}, TypeError, "^end_time must be a datetime, not int$"),
        (
            {
                "start_time": datetime(2026, 1, 2, tzinfo=UTC),
                "end_time": datetime(2026, 1, 2, tzinfo=PARIS),  # an hour earlier
            },
            ValueError,
            "^end_time is before start_time$",
        ),
        ({"jitter": "5m"}, TypeError, "^jitter: a duration is a number of seconds, not str$"),
        ({"skipped_time": "never"}, ValueError, "^skipped_time 'never' is not one of: "),
        ({"repeated_time": 7}, ValueError, "^repeated_time 7 is not one of: first, last$"),
        ({"time_zone": None}, TypeError, "^time_zone must be a string, not NoneType$"),
    ],
)
def test_a_spec_checks_its_options(
    options: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        schedule_spec("@daily", **options)


def test_list_schedules_takes_states_by_name() -> None:
    assert schedule_state("paused") == schedule_state("SCHEDULE_STATE_PAUSED") == 2
    request = _build_schedules.list_schedules("payment", "paused", 10, "t")
    assert list(request.states) == [schedule_pb2.SCHEDULE_STATE_PAUSED]  # not letters
    both = _build_schedules.list_schedules("", ["active", "stopped"], 10, "")
    assert list(both.states) == [
        schedule_pb2.SCHEDULE_STATE_ACTIVE,
        schedule_pb2.SCHEDULE_STATE_STOPPED,
    ]
    with pytest.raises(ValueError, match=r"^state 'late' is not one of: active, paused, stopped$"):
        schedule_state("late")


def test_list_runs_filters_by_schedule(client: Client) -> None:
    request = _build.list_runs("", (), "", 10, "", None, None, "basic", "", "payment/nightly")
    assert request.schedule_id == "payment/nightly"
    with pytest.raises(ValueError, match="status 'done' is not one of"):
        list(client.iter_runs(statuses="done", schedule_id="payment/nightly"))


def test_update_schedule_names_the_fields_it_changes(client: Client) -> None:
    schedule = schedule_pb2.Schedule(id="s", spec=schedule_spec("@hourly"))
    request = _build_schedules.update_schedule(schedule, ["spec", "payload"], "e-1")
    assert list(request.update_mask.paths) == ["spec", "payload"]
    assert request.etag == "e-1" and request.schedule.spec.cron_expression == "@hourly"
    assert not _build_schedules.update_schedule(schedule, (), "").update_mask.paths  # all
    with pytest.raises(ValueError, match=r"^fields \['state'\] cannot be updated; the fields"):
        client.update_schedule(schedule, ["state"])
    with pytest.raises(TypeError, match=r"^fields is a list of field names, not a string$"):
        client.update_schedule(schedule, "spec")
    with pytest.raises(ValueError, match=r"^schedule\.id is required$"):
        client.update_schedule(schedule_pb2.Schedule(), ["spec"])
    with pytest.raises(TypeError, match=r"^update_schedule takes a Schedule, not str$"):
        client.update_schedule("s")  # type: ignore[arg-type]


def test_commands_on_a_schedule_need_an_actor(client: Client) -> None:
    with pytest.raises(ValueError, match=r"^actor is required$"):
        client.pause_schedule("s", actor="")
    with pytest.raises(ValueError, match=r"^actor is required$"):
        client.resume_schedule("s", actor=" ")
    with pytest.raises(TypeError, match=r"^actor must be a string, not NoneType$"):
        client.trigger_schedule("s", actor=None)  # type: ignore[arg-type]
    day = datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match=r"^actor is required$"):
        client.backfill_schedule("s", day, day, actor="")
    pause = _build_schedules.pause_or_resume(
        schedule_service_pb2.PauseScheduleRequest, "s", "ada", "maintenance"
    )
    assert (pause.schedule_id, pause.actor, pause.note) == ("s", "ada", "maintenance")
    resume = _build_schedules.pause_or_resume(
        schedule_service_pb2.ResumeScheduleRequest, "s", "bob", ""
    )
    assert isinstance(resume, schedule_service_pb2.ResumeScheduleRequest)
    assert (resume.schedule_id, resume.actor, resume.note) == ("s", "bob", "")
    trigger = _build_schedules.trigger_schedule("s", "ada", "k-1")
    assert (trigger.actor, trigger.idempotency_key) == ("ada", "k-1")


def test_backfill_takes_a_range_of_datetimes(client: Client) -> None:
    start = datetime(2026, 1, 1, 1, 0, tzinfo=PARIS)
    request = _build_schedules.backfill_schedule(
        "s", start, datetime(2026, 1, 2, tzinfo=UTC), "ada"
    )
    assert request.start_time.ToDatetime(UTC) == datetime(2026, 1, 1, tzinfo=UTC)
    naive = datetime(2026, 1, 1, 12)  # local time, as list_runs reads it
    local = _build_schedules.backfill_schedule("s", naive, naive, "ada")
    assert local.start_time.ToDatetime(UTC) == naive.astimezone(UTC)
    with pytest.raises(ValueError, match=r"^end_time is before start_time$"):
        client.backfill_schedule("s", start, start - timedelta(seconds=1), actor="ada")
    with pytest.raises(TypeError, match=r"^a backfill needs a start_time and an end_time"):
        client.backfill_schedule("s", None, start, actor="ada")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^start_time must be a datetime, not str$"):
        client.backfill_schedule("s", "2026-01-01", start, actor="ada")  # type: ignore[arg-type]


def test_preview_takes_a_schedule_or_a_spec(client: Client) -> None:
    saved = _build_schedules.preview_schedule("s", None, 5, None)
    assert saved.schedule_id == "s" and not saved.HasField("spec") and saved.count == 5
    after = datetime(2026, 3, 29, tzinfo=UTC)
    tried = _build_schedules.preview_schedule("", "30 2 * * *", 100, after)
    assert tried.spec.cron_expression == "30 2 * * *" and tried.after.ToDatetime(UTC) == after
    with pytest.raises(ValueError, match=r"^preview a schedule_id or a spec, one of them$"):
        client.preview_schedule()
    with pytest.raises(ValueError, match=r"^preview a schedule_id or a spec, one of them$"):
        client.preview_schedule("s", spec="@daily")
    with pytest.raises(ValueError, match=r"^count must be from 1 to 100, got 101$"):
        client.preview_schedule("s", count=101)
    with pytest.raises(TypeError, match=r"^count must be a whole number, not '5'$"):
        client.preview_schedule("s", count="5")  # type: ignore[arg-type]


async def test_the_async_client_checks_schedule_calls_too() -> None:
    async with AsyncClient(f"127.0.0.1:{free_port()}", timeout=5) as client:
        with pytest.raises(ValueError, match=r"^actor is required$"):
            await client.pause_schedule("s", actor="")
        with pytest.raises(ValueError, match=r"^overlap 'x' is not one of"):
            await client.create_schedule("s", "w", "@daily", overlap="x")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=r"^preview a schedule_id or a spec"):
            await client.preview_schedule()
        with pytest.raises(ValueError, match=r"^state 'late' is not one of"):
            await client.list_schedules(states=["late"])


def test_schedule_reads_and_no_op_commands_are_retried_by_grpc() -> None:
    config = json.loads(str(dict(CHANNEL_OPTIONS)["grpc.service_config"]))
    names = {
        m
        for s, m in ((n["service"], n["method"]) for n in config["methodConfig"][0]["name"])
        if s == "squidmesh.v1.ScheduleService"
    }
    assert names == {
        "GetSchedule",
        "ListSchedules",
        "PauseSchedule",
        "ResumeSchedule",
        "BackfillSchedule",
        "PreviewSchedule",
    }  # never CreateSchedule, UpdateSchedule, DeleteSchedule, TriggerSchedule


def test_a_trigger_is_repeated_while_unavailable_only_with_a_key() -> None:
    with Client(f"127.0.0.1:{free_port()}", timeout=30) as unreachable:
        began = time.monotonic()
        with pytest.raises(grpc.RpcError):
            unreachable.trigger_schedule("s", actor="ada")
        once = time.monotonic() - began
        began = time.monotonic()
        with pytest.raises(grpc.RpcError) as raised:
            unreachable.trigger_schedule("s", actor="ada", idempotency_key="k")
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - began >= 1.5 > once
