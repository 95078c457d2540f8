"""Postgres access on the hot path: a psycopg 3 async connection pool.

SQLAlchemy Core defines the schema (`schema.py`) and Alembic migrates it, but commands talk to
psycopg directly: through SQLAlchemy's async adapter each statement cost about twice the CPU
(STACK_NOTES.md: 0.7-0.8k vs 1.3-1.7k transactions/s), and on two cores the server's CPU is
the throughput limit. Queries keep SQLAlchemy's `:name` parameter style.

- `connect()` gives an autocommit connection: each statement is its own transaction, one round
  trip (claims, heartbeats, reads).
- `transaction()` gives BEGIN ... COMMIT. (psycopg's pipeline mode would save two round trips
  per transaction but measured 15% more server CPU per step, and CPU is the limit.)
"""

from __future__ import annotations

import asyncio
import functools
import json
import random
import re
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from typing import Any, ParamSpec, TypeVar

import psycopg
import psycopg.errors
import structlog
from psycopg.rows import namedtuple_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from server.engine.errors import Unavailable

log = structlog.get_logger("squidmesh.store")

_PARAM = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


def sqlalchemy_url(url: str) -> str:
    """postgres://... or postgresql://... as the psycopg 3 dialect URL (Alembic)."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    raise ValueError(f"not a PostgreSQL URL: {url!r}")


def libpq_url(url: str) -> str:
    """The same URL as plain libpq conninfo, for psycopg."""
    return "postgresql://" + sqlalchemy_url(url)[len("postgresql+psycopg://") :]


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


@functools.lru_cache(maxsize=512)
def _psycopg_query(query: str) -> str:
    """`:name` parameters as psycopg's `%(name)s` (`::type` casts are left alone)."""
    return _PARAM.sub(r"%(\1)s", query.replace("%", "%%"))


class Result:
    """The rows of one statement, read like SQLAlchemy results."""

    def __init__(self, rows: list[Any]) -> None:
        self._rows = rows

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rows)

    def first(self) -> Any | None:
        return self._rows[0] if self._rows else None

    def one(self) -> Any:
        if len(self._rows) != 1:
            raise LookupError(f"expected one row, got {len(self._rows)}")
        return self._rows[0]

    def scalar(self) -> Any:
        return self._rows[0][0] if self._rows else None

    def scalar_one(self) -> Any:
        return self.one()[0]


class Connection:
    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._conn = conn

    async def execute(self, query: str, params: Mapping[str, Any] | None = None) -> Result:
        cursor = await self._conn.execute(_psycopg_query(query), params)
        rows = await cursor.fetchall() if cursor.description is not None else []
        return Result(rows)


class Database:
    """Owns the connection pool of one server process."""

    def __init__(self, url: str, pool_size: int = 10) -> None:
        self.url = libpq_url(url)
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
            self.url,
            min_size=pool_size,
            max_size=pool_size * 2,
            kwargs={"autocommit": True, "row_factory": namedtuple_row},
            # While Postgres is down a call fails within this, rather than the client's deadline.
            timeout=POOL_TIMEOUT_S,
            open=False,
        )
        self._checking: asyncio.Task[None] | None = None

    async def open(self) -> None:
        await self._pool.open(wait=True, timeout=30)

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[Connection]:
        with self._unavailable():
            async with self._pool.connection() as conn:
                yield Connection(conn)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        with self._unavailable():
            async with self._pool.connection() as conn, conn.transaction():
                yield Connection(conn)

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[Connection]:
        """A read-only transaction whose statements all see one snapshot (a run read together
        with its steps and attempts)."""
        with self._unavailable():
            async with self._pool.connection() as conn, conn.transaction():
                await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                yield Connection(conn)

    async def close(self) -> None:
        await self._pool.close()

    @contextmanager
    def _unavailable(self) -> Iterator[None]:
        """A lost or refused connection is `Unavailable` (retryable: UNAVAILABLE for clients,
        no answer on the attempt stream so that the worker sends again), and the pool's idle
        connections are checked, so that those Postgres closed too are replaced at once rather
        than fail one call each. A transaction Postgres rolled back (a deadlock, a
        serialization failure) is not: `retry_conflicts` runs it again."""
        try:
            yield
        except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
            raise
        except (psycopg.OperationalError, PoolTimeout) as exc:
            if self._checking is None or self._checking.done():
                self._checking = asyncio.create_task(self._pool.check())
            raise Unavailable(f"the database is unavailable: {type(exc).__name__}") from exc


POOL_TIMEOUT_S = 5.0


P = ParamSpec("P")
T = TypeVar("T")

_CONFLICT_ATTEMPTS = 5


def retry_conflicts(
    command: Callable[P, Coroutine[Any, Any, T]],
) -> Callable[P, Coroutine[Any, Any, T]]:
    """Runs a command again when Postgres aborted its transaction for a deadlock.

    Commands lock attempt rows and their run's row in an order that depends on the command (a
    claim batch locks attempts, then runs; a failing run locks itself, then cancels its
    scheduled attempts), so two can deadlock; Postgres then aborts one, which rolled back and
    can simply run again."""

    @functools.wraps(command)
    async def run(*args: P.args, **kwargs: P.kwargs) -> T:
        for attempt in range(1, _CONFLICT_ATTEMPTS + 1):
            try:
                return await command(*args, **kwargs)
            except psycopg.errors.DeadlockDetected:
                if attempt == _CONFLICT_ATTEMPTS:
                    raise
                log.info("deadlock_retried", command=command.__name__, attempt=attempt)
                await asyncio.sleep(random.uniform(0.001, 0.01 * attempt))
        raise AssertionError("unreachable")

    return run
