"""While Postgres refuses the server's connections, calls fail with UNAVAILABLE (which clients
retry), not INTERNAL; once it is back, the same server serves again."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit

import psycopg
import pytest
from grpc import StatusCode, aio
from squidmesh.v1 import run_service_pb2

from server.embedded import EmbeddedUrls
from server.store.db import libpq_url
from tests.integration.test_api import details, payload, register_orders


def allow_connections(services: EmbeddedUrls, database_url: str, allow: bool) -> None:
    """Lets the database take connections again, or refuses them and ends the open ones."""
    name = urlsplit(database_url).path.lstrip("/")
    with psycopg.connect(libpq_url(services.database_url), autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allow).lower()}')
        if not allow:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )


async def test_calls_are_unavailable_while_the_database_is_down(
    channel: aio.Channel, services: EmbeddedUrls, database_url: str
) -> None:
    runs = await register_orders(channel)
    request = run_service_pb2.StartRunRequest(workflow="orders", payload=payload(amount=1))
    allow_connections(services, database_url, False)
    try:
        for _ in range(3):  # broken pooled connections first, then refused new ones
            with pytest.raises(aio.AioRpcError) as raised:
                await runs.StartRun(request, timeout=30)
            assert raised.value.code() == StatusCode.UNAVAILABLE, raised.value.details()
            assert details(raised.value)[0] == "DATABASE_UNAVAILABLE"
        with pytest.raises(aio.AioRpcError) as raised:
            await runs.ListRuns(run_service_pb2.ListRunsRequest(), timeout=30)
        assert raised.value.code() == StatusCode.UNAVAILABLE
    finally:
        allow_connections(services, database_url, True)
    # Once it is back the same server serves again (as soon as its pool reconnected: a
    # client retries UNAVAILABLE).
    deadline = time.monotonic() + 60
    while True:
        try:
            started = await runs.StartRun(request, timeout=30)
            break
        except aio.AioRpcError as error:
            if error.code() != StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
    assert started.created
