"""The Python client refuses bad arguments with a clear TypeError/ValueError before any call.

The clients point at a port nothing listens on: an argument that got as far as a call would
raise grpc.RpcError (UNAVAILABLE) instead of the error these tests expect."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import grpc
import pytest
from squidmesh.client import AsyncClient, Client, _build, run_status, run_view
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
