"""Shared fixtures: one embedded Postgres and Redis for the whole session (or the ones named by
SQUIDMESH_TEST_DATABASE_URL and SQUIDMESH_TEST_REDIS_URL), a fresh database per test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.embedded import EmbeddedServices, EmbeddedUrls
from tests.support import drop_database, fresh_database, stream_prefix


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedUrls]:
    db = os.environ.get("SQUIDMESH_TEST_DATABASE_URL")
    redis = os.environ.get("SQUIDMESH_TEST_REDIS_URL")
    if db and redis:
        yield EmbeddedUrls(database_url=db, redis_url=redis)
        return
    embedded = EmbeddedServices(tmp_path_factory.mktemp("embedded"))
    try:
        yield embedded.start()
    finally:
        embedded.stop()


@pytest.fixture
def database_url(services: EmbeddedUrls) -> Iterator[str]:
    url = fresh_database(services.database_url)
    yield url
    # Databases left behind slow the rest of the session: autovacuum visits each of them.
    drop_database(services.database_url, url)


@pytest.fixture
def server_env(services: EmbeddedUrls, database_url: str) -> dict[str, str]:
    """Environment of a server process on its own database and stream prefix."""
    return {
        "SQUIDMESH_DATABASE_URL": database_url,
        "SQUIDMESH_REDIS_URL": services.redis_url,
        "SQUIDMESH_STREAM_PREFIX": stream_prefix(),
        "SQUIDMESH_LOG_LEVEL": "info",
        # Short default leases keep crash tests quick (a restarted server waits one lease
        # period before expiring leases).
        "SQUIDMESH_HEARTBEAT_TIMEOUT_MS": "3000",
    }


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    return tmp_path
