"""The async SQLAlchemy engine on psycopg 3 and the transaction helper every command uses."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine


def sqlalchemy_url(url: str) -> str:
    """postgres://... or postgresql://... as the psycopg 3 async dialect URL."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    raise ValueError(f"not a PostgreSQL URL: {url!r}")


def libpq_url(url: str) -> str:
    """The same URL as plain libpq conninfo, for psycopg connections outside SQLAlchemy."""
    return "postgresql://" + sqlalchemy_url(url)[len("postgresql+psycopg://") :]


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


class Database:
    """Owns the connection pool. `transaction()` yields a connection inside BEGIN ... COMMIT."""

    def __init__(self, url: str, pool_size: int = 10) -> None:
        self.url = sqlalchemy_url(url)
        self.engine: AsyncEngine = create_async_engine(
            self.url,
            pool_size=pool_size,
            max_overflow=pool_size,
            pool_pre_ping=True,
            json_serializer=dumps,
        )

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.begin() as conn:
            yield conn

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reads; each statement runs in its own implicit transaction."""
        async with self.engine.connect() as conn:
            yield conn

    async def close(self) -> None:
        await self.engine.dispose()
