"""Integration fixtures: an in-process server on a free port over real Postgres and Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio
from grpc import aio

from server.app import App
from server.embedded import EmbeddedUrls
from tests.integration.servers import running_app


@pytest_asyncio.fixture
async def app(services: EmbeddedUrls, database_url: str) -> AsyncIterator[App]:
    async with running_app(services, database_url) as app:
        yield app


@pytest_asyncio.fixture
async def channel(app: App) -> AsyncIterator[aio.Channel]:
    async with aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        yield channel
