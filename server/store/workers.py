"""Workers: what each registered worker process serves, when its attempt stream opened and
closed, and when it was last seen (registration, stream open, heartbeats)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from server.engine.views import HandoffOffer, WorkerView
from server.store.db import Connection, dumps

HOST_LABEL = "host"
"""The label the worker SDK reports its host name under; kept in its own column."""


def live_sql(alias: str = "w") -> str:
    """Whether the worker row `alias` is live: its attempt stream is open (it connected after it
    last disconnected) and it was heard from within `:live_ms` milliseconds. Shared by
    ListWorkers and ExplainRun so both call the same worker live."""
    return (
        f"({alias}.connected_at IS NOT NULL "
        f"AND {alias}.connected_at > coalesce({alias}.disconnected_at, '-infinity') "
        f"AND {alias}.last_seen_at > now() - :live_ms * interval '1 millisecond')"
    )


def slots_used_sql(alias: str = "w") -> str:
    """The number of attempts the worker row `alias` runs now."""
    return (
        f"(SELECT count(*) FROM attempts x WHERE x.worker_id = {alias}.id AND x.status = 'running')"
    )


async def register(
    conn: Connection,
    worker_id: str,
    queues: list[str],
    handlers: list[str],
    concurrency: int,
    labels: dict[str, str],
) -> None:
    await conn.execute(
        (
            "INSERT INTO workers (id, queues, handlers, concurrency, labels, host) "
            "VALUES (:id, :queues, :handlers, :concurrency, CAST(:labels AS jsonb), :host) "
            "ON CONFLICT (id) DO UPDATE SET queues = EXCLUDED.queues, "
            "handlers = EXCLUDED.handlers, concurrency = EXCLUDED.concurrency, "
            "labels = EXCLUDED.labels, host = EXCLUDED.host, last_seen_at = now()"
        ),
        {
            "id": worker_id,
            "queues": queues,
            "handlers": handlers,
            "concurrency": concurrency,
            "labels": dumps(labels),
            "host": labels.get(HOST_LABEL, ""),
        },
    )


async def connected(conn: Connection, worker_id: str) -> datetime | None:
    """Records that the worker's attempt stream opened; returns the time recorded (None: the
    worker never registered), which `disconnected` is given back."""
    at: datetime | None = (
        await conn.execute(
            "UPDATE workers SET connected_at = now(), last_seen_at = now() "
            "WHERE id = :id RETURNING connected_at",
            {"id": worker_id},
        )
    ).scalar()
    return at


async def disconnected(conn: Connection, worker_id: str, connected_at: datetime) -> None:
    """Records that the attempt stream opened at `connected_at` closed, unless the worker
    opened another since (a reconnect to another replica may come before this one notices)."""
    await conn.execute(
        "UPDATE workers SET disconnected_at = now() "
        "WHERE id = :id AND connected_at = :connected_at",
        {"id": worker_id, "connected_at": connected_at},
    )


async def list_workers(
    conn: Connection, queue: str, gone_within_ms: int, live_ms: int
) -> list[WorkerView]:
    """The live workers and those gone within `gone_within_ms`, optionally only those serving
    `queue`: live first, then by id."""
    rows = await conn.execute(
        (
            "SELECT * FROM (SELECT w.id, w.host, w.queues, w.handlers, w.concurrency, w.labels, "
            "w.connected_at, w.disconnected_at, w.last_seen_at, "
            f"{live_sql()} AS live, {slots_used_sql()} AS slots_used FROM workers w "
            "WHERE (:queue = '' OR :queue = ANY(w.queues))) v "
            "WHERE v.live OR greatest(v.last_seen_at, v.disconnected_at) "
            "  > now() - :gone_ms * interval '1 millisecond' "
            "ORDER BY v.live DESC, v.id"
        ),
        {"queue": queue, "gone_ms": gone_within_ms, "live_ms": live_ms},
    )
    return [_worker(row) for row in rows]


def _worker(row: Any) -> WorkerView:
    gone_at = None
    if not row.live:
        # Gone when its stream closed, or, when it never said so (a network cut, a replica
        # that crashed), when it was last heard from.
        closed = row.disconnected_at is not None and (
            row.connected_at is None or row.disconnected_at >= row.connected_at
        )
        gone_at = row.disconnected_at if closed else row.last_seen_at
    return WorkerView(
        id=row.id,
        host=row.host,
        queues=tuple(row.queues),
        handlers=tuple(row.handlers),
        slots_used=int(row.slots_used),
        slots_total=row.concurrency,
        connected_at=row.connected_at,
        last_seen_at=row.last_seen_at,
        live=bool(row.live),
        gone_at=gone_at,
        labels={str(k): str(v) for k, v in row.labels.items()},
    )


async def handoff_offer(conn: Connection, worker_id: str) -> HandoffOffer | None:
    """The queues and handlers a registered worker can be handed attempts of."""
    row = (
        await conn.execute("SELECT queues, handlers FROM workers WHERE id = :id", {"id": worker_id})
    ).first()
    if row is None:
        return None
    return HandoffOffer(worker_id, frozenset(row.queues), frozenset(row.handlers))
