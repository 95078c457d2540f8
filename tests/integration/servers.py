"""An in-process server on a free port over the test's Postgres and Redis."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from server.app import App
from server.embedded import EmbeddedUrls
from server.settings import Settings
from tests.support import stream_prefix


@contextlib.asynccontextmanager
async def running_app(
    services: EmbeddedUrls, database_url: str, **settings: Any
) -> AsyncIterator[App]:
    """A started App on `database_url`, with a stream prefix of its own; `settings` override
    the others (e.g. handoff=False)."""
    app = App(
        Settings(
            address="127.0.0.1:0",
            database_url=database_url,
            redis_url=services.redis_url,
            stream_prefix=stream_prefix(),
            **settings,
        )
    )
    await app.start()
    try:
        yield app
    finally:
        await app.stop(grace_s=0.5)
