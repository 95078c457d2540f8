"""Workflow versions: register (content-addressed, versioned), read, list."""

from __future__ import annotations

from typing import Any

from server.engine.model import WorkflowDef
from server.engine.views import WorkflowVersion
from server.store.db import Connection, dumps

_COLUMNS = "id, name, version, content_hash, definition, created_at"


def _version(row: Any) -> WorkflowVersion:
    return WorkflowVersion(
        id=row.id,
        name=row.name,
        version=row.version,
        content_hash=row.content_hash,
        definition=WorkflowDef.from_json(row.definition),
        created_at=row.created_at,
    )


async def register(conn: Connection, defn: WorkflowDef) -> tuple[WorkflowVersion, bool]:
    """Stores `defn` as a new version unless the latest version has the same content."""
    # Serialise registrations of one name so version numbers never race.
    await conn.execute(("SELECT pg_advisory_xact_lock(hashtext(:name))"), {"name": defn.name})
    content_hash = defn.content_hash()
    latest = (
        await conn.execute(
            (f"SELECT {_COLUMNS} FROM workflows WHERE name = :name ORDER BY version DESC LIMIT 1"),
            {"name": defn.name},
        )
    ).first()
    if latest is not None and latest.content_hash == content_hash:
        return _version(latest), False
    row = (
        await conn.execute(
            (
                "INSERT INTO workflows (name, version, content_hash, definition) "
                "VALUES (:name, :version, :hash, CAST(:definition AS jsonb)) "
                f"RETURNING {_COLUMNS}"
            ),
            {
                "name": defn.name,
                "version": (latest.version + 1) if latest is not None else 1,
                "hash": content_hash,
                "definition": dumps(defn.to_json()),
            },
        )
    ).one()
    return _version(row), True


async def get(conn: Connection, name: str, version: int = 0) -> WorkflowVersion | None:
    """One version, or the latest when `version` is 0."""
    if version:
        sql = f"SELECT {_COLUMNS} FROM workflows WHERE name = :name AND version = :version"
    else:
        sql = f"SELECT {_COLUMNS} FROM workflows WHERE name = :name ORDER BY version DESC LIMIT 1"
    row = (await conn.execute((sql), {"name": name, "version": version})).first()
    return _version(row) if row is not None else None


async def get_by_id(conn: Connection, workflow_id: int) -> WorkflowVersion:
    row = (
        await conn.execute(
            (f"SELECT {_COLUMNS} FROM workflows WHERE id = :id"), {"id": workflow_id}
        )
    ).one()
    return _version(row)


async def latest_id(conn: Connection, name: str) -> int | None:
    """Id of the latest version: cheap, so StartRun reads definitions from the cache."""
    workflow_id = (
        await conn.execute(
            "SELECT id FROM workflows WHERE name = :name ORDER BY version DESC LIMIT 1",
            {"name": name},
        )
    ).scalar()
    return int(workflow_id) if workflow_id is not None else None


async def list_latest(conn: Connection, after_name: str, limit: int) -> list[WorkflowVersion]:
    rows = await conn.execute(
        (
            f"SELECT DISTINCT ON (name) {_COLUMNS} FROM workflows WHERE name > :after "
            "ORDER BY name, version DESC LIMIT :limit"
        ),
        {"after": after_name, "limit": limit},
    )
    return [_version(r) for r in rows]
