"""The Alembic migrations build exactly the schema the code declares (server/store/schema.py),
from an empty database, and running them again is a no-op."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from server.store.db import sqlalchemy_url
from server.store.migrate import upgrade
from server.store.schema import metadata


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
