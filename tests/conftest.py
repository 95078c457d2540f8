"""Shared fixtures: one embedded Postgres and Redis for the whole session (or the ones named by
SQUIDMESH_TEST_DATABASE_URL and SQUIDMESH_TEST_REDIS_URL), a fresh database per test."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.embedded import EmbeddedServices, EmbeddedUrls
from tests.support import drop_database, fresh_database, stream_prefix


@pytest.fixture(scope="session")
def services_root() -> Iterator[Path]:
    """Where the tests' embedded Postgres and Redis keep their data: not under pytest's
    temporary directory. Run as root, Postgres runs as the user `pgserver`, which must traverse
    every parent of its data directory; but each pytest session that starts makes
    /tmp/pytest-of-<user> private again (0700), and the Postgres of a suite already running
    then PANICs at its next checkpoint (pg_control: permission denied)."""
    root = Path(tempfile.mkdtemp(prefix="squidmesh-tests-"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def service_dir(services_root: Path) -> Path:
    """An empty directory of the test's own for embedded services (see services_root)."""
    return Path(tempfile.mkdtemp(dir=services_root))


@pytest.fixture(scope="session")
def services(services_root: Path) -> Iterator[EmbeddedUrls]:
    db = os.environ.get("SQUIDMESH_TEST_DATABASE_URL")
    redis = os.environ.get("SQUIDMESH_TEST_REDIS_URL")
    if db and redis:
        yield EmbeddedUrls(database_url=db, redis_url=redis)
        return
    embedded = EmbeddedServices(services_root / "session")
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
