"""Reads of the run event log (writes happen in `changes.apply` and the claim statement)."""

from __future__ import annotations

import uuid

from server.engine.model import RunStatus
from server.engine.views import EventView
from server.store.db import Connection


async def read_after(
    conn: Connection, run_id: uuid.UUID, after_seq: int, limit: int = 500
) -> list[EventView]:
    rows = await conn.execute(
        (
            "SELECT run_id, seq, type, run_status, step_name, attempt_number, data, created_at "
            "FROM run_events WHERE run_id = :id AND seq > :after ORDER BY seq LIMIT :limit"
        ),
        {"id": run_id, "after": after_seq, "limit": limit},
    )
    return [
        EventView(
            run_id=r.run_id,
            seq=r.seq,
            type=r.type,
            run_status=RunStatus(r.run_status),
            step_name=r.step_name,
            attempt_number=r.attempt_number,
            data=r.data,
            created_at=r.created_at,
        )
        for r in rows
    ]


async def run_position(conn: Connection, run_id: uuid.UUID) -> tuple[RunStatus, int] | None:
    """(status, last event sequence) of a run."""
    row = (
        await conn.execute(("SELECT status, last_seq FROM runs WHERE id = :id"), {"id": run_id})
    ).first()
    return (RunStatus(row.status), int(row.last_seq)) if row is not None else None
