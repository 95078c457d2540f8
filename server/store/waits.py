"""Gates: the rows of steps that wait for a person, an event or a child run, and the events
published for them (see schema.waits and schema.published_events)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from server.engine.model import JSON
from server.store.db import Connection, dumps
from server.store.runs import CHILD_KEY_PREFIX


@dataclass(frozen=True)
class Wait:
    run_id: uuid.UUID
    step_name: str
    kind: str
    event_name: str | None
    correlation_key: str | None
    deadline_at: datetime | None
    votes: list[dict[str, JSON]]
    created_at: datetime


_COLUMNS = "run_id, step_name, kind, event_name, correlation_key, deadline_at, votes, created_at"


def _wait(row: Any) -> Wait:
    return Wait(
        row.run_id,
        row.step_name,
        row.kind,
        row.event_name,
        row.correlation_key,
        row.deadline_at,
        row.votes,
        row.created_at,
    )


async def open_waits(conn: Connection, run_id: uuid.UUID) -> list[Wait]:
    """The run's open waits, oldest first (read under the run's lock: they stay open)."""
    rows = await conn.execute(
        f"SELECT {_COLUMNS} FROM waits WHERE run_id = :run AND resolved_at IS NULL "
        "ORDER BY created_at, step_name",
        {"run": run_id},
    )
    return [_wait(row) for row in rows]


async def resolve(conn: Connection, run_id: uuid.UUID, step: str) -> None:
    await conn.execute(
        "UPDATE waits SET resolved_at = now() "
        "WHERE run_id = :run AND step_name = :step AND resolved_at IS NULL",
        {"run": run_id, "step": step},
    )


async def add_vote(conn: Connection, run_id: uuid.UUID, step: str, vote: dict[str, JSON]) -> None:
    await conn.execute(
        "UPDATE waits SET votes = votes || CAST(:vote AS jsonb) "
        "WHERE run_id = :run AND step_name = :step",
        {"run": run_id, "step": step, "vote": dumps([vote])},
    )


async def due_deadlines(conn: Connection, limit: int = 200) -> list[tuple[uuid.UUID, str]]:
    """Open waits whose deadline passed, earliest first (claimed one by one: `claim_due`)."""
    rows = await conn.execute(
        "SELECT run_id, step_name FROM waits "
        "WHERE resolved_at IS NULL AND deadline_at IS NOT NULL AND deadline_at <= now() "
        "ORDER BY deadline_at LIMIT :limit",
        {"limit": limit},
    )
    return [(row.run_id, row.step_name) for row in rows]


async def claim_due(conn: Connection, run_id: uuid.UUID, step: str) -> bool:
    """Locks the wait if it is still open and past its deadline, unless another replica holds
    it (it fires it): exactly one replica fires a deadline."""
    row = (
        await conn.execute(
            "SELECT 1 FROM waits WHERE run_id = :run AND step_name = :step "
            "AND resolved_at IS NULL AND deadline_at <= now() FOR UPDATE SKIP LOCKED",
            {"run": run_id, "step": step},
        )
    ).first()
    return row is not None


# --- events and child runs ---------------------------------------------------------------------


async def lock_event_key(conn: Connection, name: str, correlation_key: str) -> None:
    """Serialises the publications of an event name and key with the runs that start waiting
    for it: whichever commits second sees the other (no lost event)."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended(:name || chr(31) || :key, 0))",
        {"name": name, "key": correlation_key},
    )


@dataclass(frozen=True)
class PublishedEvent:
    event_id: str
    payload: dict[str, JSON]
    published_at: datetime
    actor: str


async def publish(
    conn: Connection,
    name: str,
    correlation_key: str,
    event_id: str,
    payload: dict[str, JSON],
    actor: str,
) -> tuple[PublishedEvent, bool]:
    """Stores the event unless its id was published before; the event, and whether it is new."""
    row = (
        await conn.execute(
            "INSERT INTO published_events (name, correlation_key, event_id, payload, actor) "
            "VALUES (:name, :key, :id, CAST(:payload AS jsonb), :actor) "
            "ON CONFLICT (name, event_id) DO NOTHING RETURNING published_at",
            {
                "name": name,
                "key": correlation_key,
                "id": event_id,
                "payload": dumps(payload),
                "actor": actor,
            },
        )
    ).first()
    if row is not None:
        return PublishedEvent(event_id, payload, row.published_at, actor), True
    first = (
        await conn.execute(
            "SELECT event_id, payload, published_at, actor FROM published_events "
            "WHERE name = :name AND event_id = :id",
            {"name": name, "id": event_id},
        )
    ).one()
    return PublishedEvent(first.event_id, first.payload, first.published_at, first.actor), False


async def waiting_for(conn: Connection, name: str, correlation_key: str) -> list[uuid.UUID]:
    """The runs with an open wait for this event, in id order (the order their rows are
    locked in, so that concurrent publications never deadlock)."""
    rows = await conn.execute(
        "SELECT DISTINCT run_id FROM waits WHERE kind = 'event' AND resolved_at IS NULL "
        "AND event_name = :name AND correlation_key = :key ORDER BY run_id",
        {"name": name, "key": correlation_key},
    )
    return [row.run_id for row in rows]


_UNCONSUMED = (
    "NOT EXISTS (SELECT 1 FROM run_commands c WHERE c.run_id = {run} AND c.type = 'event' "
    "AND c.outcome = 'applied' AND c.idempotency_key = e.event_id AND c.data ->> 'event' = e.name)"
)
"""The published event `e` resolved no wait of the run `{run}` yet (its history records each
event that did)."""


async def unconsumed_event(conn: Connection, wait: Wait, since: datetime) -> PublishedEvent | None:
    """The oldest event for the wait published since `since` that resolved no other wait of
    its run (one event resolves one wait per run)."""
    row = (
        await conn.execute(
            "SELECT e.event_id, e.payload, e.published_at, e.actor FROM published_events e "
            "WHERE e.name = :name AND e.correlation_key = :key AND e.published_at >= :since "
            f"AND {_UNCONSUMED.format(run=':run')} ORDER BY e.published_at, e.id LIMIT 1",
            {
                "name": wait.event_name,
                "key": wait.correlation_key,
                "since": since,
                "run": wait.run_id,
            },
        )
    ).first()
    if row is None:
        return None
    return PublishedEvent(row.event_id, row.payload, row.published_at, row.actor)


async def runs_with_open_lookups(conn: Connection, limit: int = 200) -> list[uuid.UUID]:
    """Runs with an event wait whose event was published already, or a child wait whose child
    ended: what a crash between a wait's commit and its look-back left (the timer loop's
    sweep resolves them)."""
    rows = await conn.execute(
        "SELECT DISTINCT w.run_id FROM waits w JOIN runs r ON r.id = w.run_id "
        "WHERE w.resolved_at IS NULL AND ("
        "  (w.kind = 'event' AND EXISTS (SELECT 1 FROM published_events e "
        "     WHERE e.name = w.event_name AND e.correlation_key = w.correlation_key "
        "     AND e.published_at >= r.created_at "
        f"    AND {_UNCONSUMED.format(run='w.run_id')}))"
        "  OR (w.kind = 'child' AND EXISTS (SELECT 1 FROM runs c "
        "     WHERE c.parent_run_id = w.run_id AND c.idempotency_key = :prefix || "
        "       w.run_id::text || '/' || w.correlation_key "
        "     AND c.status IN ('completed', 'failed', 'cancelled')))) LIMIT :limit",
        {"limit": limit, "prefix": CHILD_KEY_PREFIX},
    )
    return [row.run_id for row in rows]
