"""The Alembic migrations build exactly the schema the code declares (server/store/schema.py),
from an empty database, and running them again is a no-op."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from server.store.db import sqlalchemy_url
from server.store.migrate import upgrade
from server.store.schema import metadata
from tests.support import REPO, child_env


def test_migrations_match_the_schema(database_url: str) -> None:
    upgrade(database_url)
    upgrade(database_url)  # idempotent
    engine = create_engine(sqlalchemy_url(database_url))
    try:
        with engine.connect() as conn:
            diff: list[Any] = compare_metadata(MigrationContext.configure(conn), metadata)
            tables = set(inspect(conn).get_table_names())
            options = {
                name: sorted(reloptions or ())
                for name, reloptions in conn.execute(
                    text("SELECT relname, reloptions FROM pg_class WHERE relname = ANY(:names)"),
                    {"names": list(metadata.tables)},
                )
            }
    finally:
        engine.dispose()
    assert diff == []
    assert {"workflows", "runs", "steps", "attempts", "run_events", "workers"} <= tables
    # Storage parameters, which autogenerate does not compare.
    declared = {
        name: sorted(f"{k}={v}" for k, v in table.dialect_options["postgresql"]["with"].items())
        if table.dialect_options["postgresql"]["with"]
        else []
        for name, table in metadata.tables.items()
    }
    assert options == declared


def test_replicas_starting_together_migrate_one_after_the_other(database_url: str) -> None:
    """Server replicas started at once on an empty database each run the migrations (as
    `squidmesh migrate` does, in a process of its own: Alembic's context is global to a
    process): the first one migrates, the others wait for it and find the schema current.
    They used to fail creating alembic_version, or a table, a second time."""
    migrate = [sys.executable, "-m", "server.cli", "migrate"]
    env = child_env({"SQUIDMESH_DATABASE_URL": database_url})
    processes = [
        subprocess.Popen(
            migrate, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=120)[0].decode(errors="replace") for p in processes]
    assert [p.returncode for p in processes] == [0] * 4, "\n".join(outputs)
    engine = create_engine(sqlalchemy_url(database_url))
    try:
        with engine.connect() as conn:
            diff: list[Any] = compare_metadata(MigrationContext.configure(conn), metadata)
    finally:
        engine.dispose()
    assert diff == []
