"""The commands received about each run (see schema.run_commands): the audit trail, and what
makes a command's idempotency key return its first result."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from server.engine.model import JSON
from server.store.db import Connection, dumps


@dataclass(frozen=True)
class CommandRecord:
    run_id: uuid.UUID
    type: str
    """"cancel", "replay", "resume", "approve", "reject" or "event"."""
    actor: str
    comment: str = ""
    idempotency_key: str = ""
    step: str = ""
    request_hash: str = ""
    outcome: str = "applied"
    """"applied", "refused" or "duplicate"."""
    refusal_reason: str = ""
    refusal_message: str = ""
    data: dict[str, JSON] = field(default_factory=dict)
    created_at: datetime | None = None
    id: int = 0


_COLUMNS = (
    "id, run_id, type, step_name, actor, comment, idempotency_key, request_hash, outcome, "
    "refusal_reason, refusal_message, data, created_at"
)


def _record(row: Any) -> CommandRecord:
    return CommandRecord(
        run_id=row.run_id,
        type=row.type,
        actor=row.actor,
        comment=row.comment,
        idempotency_key=row.idempotency_key or "",
        step=row.step_name or "",
        request_hash=row.request_hash,
        outcome=row.outcome,
        refusal_reason=row.refusal_reason or "",
        refusal_message=row.refusal_message or "",
        data=row.data,
        created_at=row.created_at,
        id=row.id,
    )


async def record(conn: Connection, command: CommandRecord) -> None:
    await conn.execute(
        # A refusal may name a run that does not exist: nothing to record then.
        "INSERT INTO run_commands (run_id, type, step_name, actor, comment, idempotency_key, "
        "request_hash, outcome, refusal_reason, refusal_message, data) SELECT :run, :type, "
        ":step, :actor, :comment, :key, :hash, :outcome, :reason, :message, "
        "CAST(:data AS jsonb) WHERE EXISTS (SELECT 1 FROM runs WHERE id = :run)",
        {
            "run": command.run_id,
            "type": command.type,
            "step": command.step or None,
            "actor": command.actor,
            "comment": command.comment,
            "key": command.idempotency_key or None,
            "hash": command.request_hash,
            "outcome": command.outcome,
            "reason": command.refusal_reason or None,
            "message": command.refusal_message or None,
            "data": dumps(command.data),
        },
    )


async def applied_with_key(conn: Connection, run_id: uuid.UUID, key: str) -> CommandRecord | None:
    """The applied command (not an event) that used this idempotency key on the run."""
    row = (
        await conn.execute(
            f"SELECT {_COLUMNS} FROM run_commands WHERE run_id = :run "
            "AND idempotency_key = :key AND outcome = 'applied' AND type <> 'event'",
            {"run": run_id, "key": key},
        )
    ).first()
    return _record(row) if row is not None else None


async def page(
    conn: Connection, run_id: uuid.UUID, after_id: int, limit: int
) -> list[CommandRecord]:
    """The run's commands in the order they were received, after the command `after_id`."""
    rows = await conn.execute(
        f"SELECT {_COLUMNS} FROM run_commands WHERE run_id = :run AND id > :after "
        "ORDER BY id LIMIT :limit",
        {"run": run_id, "after": after_id, "limit": limit},
    )
    return [_record(row) for row in rows]
