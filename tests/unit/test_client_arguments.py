"""The Python client refuses bad arguments with a clear TypeError/ValueError before any call.

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
from squidmesh.client import AsyncClient, Client, run_status, run_view
from squidmesh.requests import _build
from squidmesh.retries import CHANNEL_OPTIONS
from squidmesh.v1 import run_pb2, run_service_pb2

from tests.support import free_port
from worker_sdk import Workflow


@pytest.fixture
def client() -> Iterator[Client]:
    with Client(f"127.0.0.1:{free_port()}", timeout=5) as c:
        yield c


@pytest.mark.parametrize(
    ("payload", "kind"),
    [([1, 2], "a list"), ("x", "a string"), (3, "a number"), (True, "a boolean")],
)
def test_a_payload_that_is_not_an_object_is_a_type_error(
    client: Client, payload: Any, kind: str
) -> None:
    with pytest.raises(TypeError, match=rf"^payload must be a JSON object, not {kind}$"):
        client.start_run("w", payload)


async def test_the_async_client_checks_the_payload_too() -> None:
    async with AsyncClient(f"127.0.0.1:{free_port()}", timeout=5) as client:
        with pytest.raises(TypeError, match="payload must be a JSON object, not a list"):
            await client.start_run("w", [1, 2])  # type: ignore[arg-type]


def test_payload_values_that_are_not_json_are_named_by_their_path(client: Client) -> None:
    with pytest.raises(ValueError, match=r"payload\.n: integer .* does not fit"):
        client.start_run("w", {"n": 2**60})
    with pytest.raises(TypeError, match=r"payload\.when: datetime is not JSON"):
        client.start_run("w", {"when": datetime.now(UTC)})


def test_an_empty_list_is_not_taken_for_no_payload(client: Client) -> None:
    with pytest.raises(TypeError, match="not a list"):
        client.start_run("w", [])  # type: ignore[arg-type]


def test_register_workflow_takes_a_workflow_or_a_definition(client: Client) -> None:
    with pytest.raises(TypeError, match="takes a Workflow or a WorkflowDefinition, not dict"):
        client.register_workflow({"name": "w"})  # type: ignore[arg-type]
    workflow = Workflow("w")
    request = _build.register_workflow(workflow)
    assert request.definition.name == "w"


def test_statuses_and_views_by_name_number_or_full_name() -> None:
    assert run_status("completed") == run_status("RUN_STATUS_COMPLETED") == 7
    assert run_status(run_pb2.RUN_STATUS_FAILED) == run_pb2.RUN_STATUS_FAILED
    assert run_view("full") == run_service_pb2.RUN_VIEW_FULL
    with pytest.raises(ValueError, match=r"^status 'bogus' is not one of: pending, running, "):
        run_status("bogus")
    with pytest.raises(ValueError, match="status 'unspecified' is not one of"):
        run_status("unspecified")
    with pytest.raises(ValueError, match="status 99 is not one of"):
        run_status(99)
    with pytest.raises(ValueError, match=r"^view 'all' is not one of: basic, full$"):
        run_view("all")


def test_list_runs_checks_its_filters(client: Client) -> None:
    with pytest.raises(ValueError, match="status 'done' is not one of"):
        client.list_runs(statuses=["done"])
    with pytest.raises(ValueError, match="view 'everything' is not one of"):
        list(client.iter_runs(view="everything"))
    with pytest.raises(TypeError, match="created_after must be a datetime, not str"):
        client.list_runs(created_after="2026-01-01")  # type: ignore[arg-type]


def test_list_runs_request_carries_filters_and_view() -> None:
    after = datetime(2026, 11, 21, 19, 6, 49, tzinfo=timezone(timedelta(hours=2)))
    request = _build.list_runs(
        "payment", "failed", "manual", 10, "", after, None, run_service_pb2.RUN_VIEW_FULL
    )
    assert list(request.statuses) == [run_pb2.RUN_STATUS_FAILED]  # one status, not letters
    assert request.create_time_after.ToDatetime(UTC) == after
    assert not request.HasField("create_time_before")
    assert request.view == run_service_pb2.RUN_VIEW_FULL


def test_idempotent_calls_are_retried_with_backoff_while_unavailable() -> None:
    """Nothing listens: GetRun is tried five times (backoffs of about 0.2, 0.4, 0.8 and 1.6 s,
    with gRPC's jitter) before UNAVAILABLE reaches the caller; StartRun is repeated only with
    an idempotency key."""
    with Client(f"127.0.0.1:{free_port()}", timeout=30) as unreachable:
        began = time.monotonic()
        with pytest.raises(grpc.RpcError) as raised:
            unreachable.get_run("00000000-0000-0000-0000-000000000000")
        retried = time.monotonic() - began
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        began = time.monotonic()
        with pytest.raises(grpc.RpcError):
            unreachable.start_run("w", {})
        once = time.monotonic() - began
        # With an idempotency key a repeat is safe: the client waits at least half of each
        # backoff (0.2, 0.4, 0.8, 1.6 s) between its five attempts.
        began = time.monotonic()
        with pytest.raises(grpc.RpcError) as raised:
            unreachable.start_run("w", {}, idempotency_key="k")
        keyed = time.monotonic() - began
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        assert keyed >= 1.5, keyed
    # gRPC's jitter draws each backoff in [0, current]: lower bounds cannot be promised
    # per attempt, but four of them take far longer than one refused connection.
    assert retried > once and retried > 0.1, (retried, once)


def test_commands_on_people_in_the_loop_need_an_actor(client: Client) -> None:
    with pytest.raises(ValueError, match=r"^actor is required$"):
        client.resume_run("r", actor="")
    with pytest.raises(ValueError, match=r"^actor is required$"):
        client.approve_step("r", actor="  ")
    with pytest.raises(TypeError, match=r"^actor must be a string, not NoneType$"):
        client.reject_step("r", actor=None)  # type: ignore[arg-type]


async def test_the_async_client_checks_commands_too() -> None:
    async with AsyncClient(f"127.0.0.1:{free_port()}", timeout=5) as client:
        with pytest.raises(ValueError, match=r"^actor is required$"):
            await client.resume_run("r", actor="")
        with pytest.raises(TypeError, match="payload must be a JSON object, not a list"):
            await client.reject_step("r", actor="ada", payload=[1])  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=r"^correlation_key is required$"):
            await client.publish_event("paid", "")
        with pytest.raises(ValueError, match=r"^gone_within: a duration must be a finite"):
            await client.list_workers(gone_within=-1)


def test_decision_payloads_are_checked_like_run_payloads(client: Client) -> None:
    with pytest.raises(TypeError, match="payload must be a JSON object, not a string"):
        client.approve_step("r", actor="ada", payload="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"payload\.limit: integer .* does not fit"):
        client.reject_step("r", actor="ada", payload={"limit": 2**60})


def test_decision_requests_carry_every_argument() -> None:
    approve = _build.approve_step("r1", "sign_off", "ada", "fine", {"limit": 5}, "k-1")
    assert (approve.run_id, approve.step, approve.actor, approve.comment) == (
        "r1",
        "sign_off",
        "ada",
        "fine",
    )
    assert approve.idempotency_key == "k-1" and approve.payload["limit"] == 5
    reject = _build.reject_step("r1", "", "bob", "", None, "")
    assert not reject.HasField("payload")  # no payload at all, not an empty one
    resume = _build.resume_run("r1", "hold", "ada", "go on", "k-2")
    assert (resume.step, resume.comment, resume.idempotency_key) == ("hold", "go on", "k-2")


def test_an_event_without_an_id_gets_one_so_that_a_repeat_publishes_it_once() -> None:
    first = _build.publish_event("paid", "order:7", {"amount": 3}, "", "shop")
    second = _build.publish_event("paid", "order:7", {"amount": 3}, "", "shop")
    assert first.event_id and second.event_id and first.event_id != second.event_id
    assert (first.name, first.correlation_key, first.actor) == ("paid", "order:7", "shop")
    assert first.payload["amount"] == 3
    given = _build.publish_event("paid", "order:7", None, "evt-1", "")
    assert given.event_id == "evt-1" and not given.HasField("payload")
    with pytest.raises(ValueError, match=r"^name is required$"):
        _build.publish_event("", "order:7", None, "", "")


def test_child_runs_name_their_parent_and_carry_a_key(client: Client) -> None:
    with pytest.raises(ValueError, match=r"^a child run .* needs an idempotency_key$"):
        client.start_run("w", {}, parent_run_id="p1", parent_step="s")
    with pytest.raises(ValueError, match=r"^parent_step needs parent_run_id$"):
        client.start_run("w", {}, parent_step="s", idempotency_key="k")
    request = _build.start_run("w", {"a": 1}, "", "k", "p1", "fan_out")
    assert (request.parent_run_id, request.parent_step, request.idempotency_key) == (
        "p1",
        "fan_out",
        "k",
    )
    children = _build.list_runs("", (), "", 10, "", None, None, "basic", "p1")
    assert children.parent_run_id == "p1"


def test_list_workers_takes_seconds_or_a_timedelta() -> None:
    assert _build.list_workers("", timedelta(hours=1)).gone_within.seconds == 3600
    assert _build.list_workers("q", 90.5).gone_within.ToNanoseconds() == 90_500_000_000
    unset = _build.list_workers("q", None)
    assert unset.queue == "q" and not unset.HasField("gone_within")
    with pytest.raises(TypeError, match=r"^gone_within: a duration is a number of seconds, not"):
        _build.list_workers("", "1h")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^gone_within: a duration must be >= 0"):
        _build.list_workers("", timedelta(seconds=-1))


def test_reads_of_the_new_rpcs_are_retried_by_grpc() -> None:
    config = json.loads(str(dict(CHANNEL_OPTIONS)["grpc.service_config"]))
    names = {(n["service"], n["method"]) for n in config["methodConfig"][0]["name"]}
    assert {
        ("squidmesh.v1.RunService", "ExplainRun"),
        ("squidmesh.v1.RunService", "GetRunHistory"),
        ("squidmesh.v1.WorkerService", "ListWorkers"),
    } <= names
    # Commands that change a run are never repeated by gRPC blindly: only with a key.
    assert not {m for _, m in names} & {"ResumeRun", "ApproveStep", "RejectStep", "PublishEvent"}


def test_keyed_commands_and_events_are_retried_while_unavailable() -> None:
    """Nothing listens. A command with an idempotency key, and every event (it always has an
    id), waits at least half of each backoff (0.2, 0.4, 0.8, 1.6 s) between five attempts; a
    command without a key is tried once."""
    with Client(f"127.0.0.1:{free_port()}", timeout=30) as unreachable:
        began = time.monotonic()
        with pytest.raises(grpc.RpcError):
            unreachable.approve_step("r", actor="ada")
        once = time.monotonic() - began
        for call in (
            lambda: unreachable.approve_step("r", actor="ada", idempotency_key="k"),
            lambda: unreachable.publish_event("paid", "order:7"),
        ):
            began = time.monotonic()
            with pytest.raises(grpc.RpcError) as raised:
                call()
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
            assert time.monotonic() - began >= 1.5 > once


async def test_the_async_client_retries_keyed_calls_too() -> None:
    """asyncio's call errors are no grpc.Call: the AsyncClient still reads their status, and
    repeats a keyed StartRun while UNAVAILABLE (at least half of each backoff in between)."""
    async with AsyncClient(f"127.0.0.1:{free_port()}", timeout=30) as unreachable:
        began = time.monotonic()
        with pytest.raises(grpc.RpcError) as raised:
            await unreachable.start_run("w", {}, idempotency_key="k")
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - began >= 1.5
