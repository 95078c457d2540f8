"""Integration fixtures: an in-process server on a free port over real Postgres and Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio
from grpc import aio

from server.app import App
from server.embedded import EmbeddedUrls
from server.settings import Settings
from tests.support import stream_prefix


@pytest_asyncio.fixture
async def app(services: EmbeddedUrls, database_url: str) -> AsyncIterator[App]:
    app = App(
        Settings(
            address="127.0.0.1:0",
            database_url=database_url,
            redis_url=services.redis_url,
            stream_prefix=stream_prefix(),
        )
    )
    await app.start()
    try:
        yield app
    finally:
        await app.stop(grace_s=0.5)


@pytest_asyncio.fixture
async def channel(app: App) -> AsyncIterator[aio.Channel]:
    async with aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        yield channel
