"""Fixtures of the fuzz suite: a server per test, shared by all of the test's examples."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio
from grpc import aio

from server.app import App
from server.embedded import EmbeddedUrls
from tests.integration.fuzz.harness import Rows
from tests.integration.servers import running_app


@pytest_asyncio.fixture
async def fuzz_app(services: EmbeddedUrls, database_url: str) -> AsyncIterator[App]:
    """A server whose idle watches send keep-alives at once, so that a watch answers quickly."""
    async with running_app(services, database_url, watch_keepalive_ms=100) as app:
        yield app


@pytest_asyncio.fixture
async def fuzz_channel(fuzz_app: App) -> AsyncIterator[aio.Channel]:
    async with aio.insecure_channel(f"127.0.0.1:{fuzz_app.port}") as channel:
        yield channel


@pytest_asyncio.fixture
async def rows(database_url: str) -> AsyncIterator[Rows]:
    counter = Rows(database_url)
    yield counter
    await counter.close()
