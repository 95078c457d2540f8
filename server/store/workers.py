"""Workers: what each registered worker process serves, and when it was last seen."""

from __future__ import annotations

from server.engine.views import HandoffOffer
from server.store.db import Connection, dumps


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
            "INSERT INTO workers (id, queues, handlers, concurrency, labels) "
            "VALUES (:id, :queues, :handlers, :concurrency, CAST(:labels AS jsonb)) "
            "ON CONFLICT (id) DO UPDATE SET queues = EXCLUDED.queues, "
            "handlers = EXCLUDED.handlers, concurrency = EXCLUDED.concurrency, "
            "labels = EXCLUDED.labels, last_seen_at = now()"
        ),
        {
            "id": worker_id,
            "queues": queues,
            "handlers": handlers,
            "concurrency": concurrency,
            "labels": dumps(labels),
        },
    )


async def handoff_offer(conn: Connection, worker_id: str) -> HandoffOffer | None:
    """The queues and handlers a registered worker can be handed attempts of."""
    row = (
        await conn.execute("SELECT queues, handlers FROM workers WHERE id = :id", {"id": worker_id})
    ).first()
    if row is None:
        return None
    return HandoffOffer(worker_id, frozenset(row.queues), frozenset(row.handlers))
