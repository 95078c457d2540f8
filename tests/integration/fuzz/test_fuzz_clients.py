"""Fuzzing the Python SDK's clients (`Client` and `AsyncClient`) through their Python arguments:
hostile strings, payloads that are not JSON objects or hold NaN, big or deep values, unknown
statuses and views, huge page sizes and versions, odd datetimes. Each call either is refused
locally (TypeError or ValueError, before anything is sent) or answered with a clear status,
and no refusal writes anything."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import grpc
from grpc import aio
from hypothesis import strategies as st
from squidmesh.client import AsyncClient, Client

from server.app import App
from tests.integration.fuzz import hostile
from tests.integration.fuzz.harness import (
    CALL_TIMEOUT,
    Rows,
    assert_clear,
    assert_still_serves,
    every_type,
    fuzz,
    refused_cleanly,
)
from tests.integration.test_api import definition, register_orders

Example = tuple[bool, str, dict[str, Any]]
"""(through AsyncClient, method name, keyword arguments)."""


def texts(*known: str) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(known), hostile.texts()) if known else hostile.texts()


def arguments(run_ids: list[str]) -> st.SearchStrategy[tuple[str, dict[str, Any]]]:
    ids = st.one_of(st.sampled_from(run_ids), st.uuids().map(str), hostile.texts())
    anything = st.one_of(hostile.json_values(4), st.builds(object), st.just(b"bytes"))
    big = st.one_of(st.integers(-(2**40), 2**40), st.sampled_from([2**31, -(2**31) - 1]))
    moments = st.one_of(
        st.none(),
        st.datetimes(timezones=st.sampled_from([None, UTC, timezone(timedelta(hours=-14))])),
        st.sampled_from([datetime.min.replace(tzinfo=UTC), datetime.max.replace(tzinfo=UTC)]),
        anything,
    )
    statuses = st.one_of(
        st.sampled_from(["completed", "RUN_STATUS_FAILED", 2, 0, 99, -1, "nope", True]),
        st.lists(st.one_of(st.sampled_from(["pending", "running", 3, 77]), hostile.texts())),
    )
    payloads = st.one_of(
        st.none(),
        st.dictionaries(texts("amount", "count", "object"), hostile.payload_values(), max_size=3),
        anything,
    )
    calls: dict[str, st.SearchStrategy[dict[str, Any]]] = {
        "start_run": st.fixed_dictionaries(
            {"workflow": texts("orders", "bags"), "payload": payloads},
            optional={"trigger": texts("manual"), "idempotency_key": texts("k1")},
        ),
        "get_run": st.fixed_dictionaries({"run_id": ids}),
        "list_runs": st.fixed_dictionaries(
            {},
            optional={
                "workflow": texts("orders"),
                "statuses": statuses,
                "trigger": texts("manual"),
                "page_size": big,
                "page_token": hostile.page_tokens(),
                "created_after": moments,
                "created_before": moments,
                "view": st.sampled_from(["basic", "full", "FULL", "nope", 0, 2, 99]),
            },
        ),
        "watch_run": st.fixed_dictionaries(
            {"run_id": ids}, optional={"after_sequence": st.one_of(big, st.integers())}
        ),
        "cancel_run": st.fixed_dictionaries(
            {"run_id": ids},
            optional={"actor": texts(), "reason": texts(), "idempotency_key": texts()},
        ),
        "replay_run": st.fixed_dictionaries(
            {"run_id": ids},
            optional={"allow_irreversible": st.booleans(), "idempotency_key": texts()},
        ),
        "get_workflow": st.fixed_dictionaries(
            {"name": texts("orders", "bags")}, optional={"version": big}
        ),
        "list_workflows": st.fixed_dictionaries(
            {}, optional={"page_size": big, "page_token": hostile.page_tokens()}
        ),
        "register_workflow": st.fixed_dictionaries(
            {"workflow": st.one_of(hostile.requests(definition("fuzzed")), anything)}
        ),
    }
    return st.one_of(*(st.tuples(st.just(name), kwargs) for name, kwargs in calls.items()))


async def test_sdk_clients_refuse_locally_or_get_a_clear_status(
    fuzz_app: App, fuzz_channel: aio.Channel, database_url: str, rows: Rows
) -> None:
    await register_orders(fuzz_channel)
    address = f"127.0.0.1:{fuzz_app.port}"
    client, async_client = Client(address, timeout=CALL_TIMEOUT), AsyncClient(address)
    await async_client.register_workflow(every_type())
    run_ids = [(await async_client.start_run("orders", {"amount": 1})).id for _ in range(2)]
    loop = asyncio.get_running_loop()
    examples = st.tuples(st.booleans(), arguments(run_ids)).map(lambda e: (e[0], *e[1]))

    def sync_call(name: str, kwargs: dict[str, Any]) -> None:
        if name == "watch_run":
            watch = client.watch_run(**kwargs, timeout=CALL_TIMEOUT)
            next(watch, None)
            watch.close()
        else:
            getattr(client, name)(**kwargs)

    async def async_call(name: str, kwargs: dict[str, Any]) -> None:
        if name == "watch_run":
            watch = async_client.watch_run(**kwargs)
            await anext(aiter(watch), None)
        else:
            await getattr(async_client, name)(**kwargs)

    async def counts() -> dict[str, int]:
        return await rows.counts()

    local = (TypeError, ValueError)  # refused by the client itself, before sending

    def check(example: Example) -> Any:
        use_async, name, kwargs = example
        if use_async:
            return refused_cleanly(rows, lambda: async_call(name, kwargs), example, local)
        # The blocking client runs here, in the examples' thread; rows are counted on the loop.
        before = asyncio.run_coroutine_threadsafe(counts(), loop).result(CALL_TIMEOUT)
        try:
            sync_call(name, kwargs)
        except local:
            pass
        except grpc.RpcError as error:
            assert_clear(error, example)
        else:
            return None
        after = asyncio.run_coroutine_threadsafe(counts(), loop).result(CALL_TIMEOUT)
        assert after == before, f"a refused call wrote rows: {example}"
        return None

    try:
        await fuzz(examples, check, examples=250)
    finally:
        client.close()
        await async_client.close()
    await assert_still_serves(fuzz_channel, database_url)
