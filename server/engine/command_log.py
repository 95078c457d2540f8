"""The record of manual commands on runs (cancel, replay, resume, approve, reject): each runs
under its run's lock and is recorded in the run's history, applied, a duplicate of the command
that used its idempotency key first (whose result it returns), or refused."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import replace

from server.engine.core import EngineCore, log
from server.engine.errors import (
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    run_not_found,
)
from server.engine.model import JSON, TERMINAL_RUN_STATUSES, WorkflowDef
from server.store import changes, commands, runs
from server.store.changes import RunChange
from server.store.commands import CommandRecord
from server.store.db import Connection, retry_conflicts
from server.store.runs import LockedRun

Act = Callable[
    [Connection, LockedRun, WorkflowDef], Awaitable[tuple[RunChange | None, dict[str, JSON]]]
]
"""A command's decision under the run's lock: the change (None: nothing to change), and what
to record as its result."""


class CommandLog(EngineCore):
    async def _run_command(self, request: CommandRecord, act: Act) -> CommandRecord:
        """Runs a command on a run under its lock and records it: applied, a duplicate of the
        command that used its idempotency key first (whose result it returns), or refused
        (recorded in a transaction of its own, since the command's rolled back)."""
        request = replace(request, request_hash=_request_hash(request))
        try:
            if not request.actor:
                raise InvalidArgument(
                    f"{request.type}: actor is required (who sends the command)",
                    [FieldViolation("actor", "must not be empty")],
                )
            applied, change = await self._apply_command(request, act)
        except DomainError as exc:
            if not (isinstance(exc, NotFound) and exc.reason == "RUN_NOT_FOUND"):
                await self._record_refusal(request, exc)
            raise
        if change is not None:
            await self._after_commit(change)
        return applied

    @retry_conflicts
    async def _apply_command(
        self, request: CommandRecord, act: Act
    ) -> tuple[CommandRecord, RunChange | None]:
        async with self._db.transaction() as conn:
            run = await runs.lock(conn, request.run_id)
            if run is None:
                raise run_not_found(request.run_id)
            key = request.idempotency_key
            first = await commands.applied_with_key(conn, run.id, key) if key else None
            if first is not None:
                if (first.type, first.request_hash) != (request.type, request.request_hash):
                    raise AlreadyExists(
                        f"idempotency key '{key}' was used by another command on run "
                        f"'{run.id}' ({first.type}"
                        + (f" of step '{first.step}'" if first.step else "")
                        + ")",
                        reason="IDEMPOTENCY_KEY_REUSED",
                        metadata={"run_id": str(run.id), "command": first.type},
                    )
                await commands.record(conn, replace(request, outcome="duplicate", data=first.data))
                return first, None
            defn = await self._definition(conn, run.workflow_id)
            change, result = await act(conn, run, defn)
            applied = replace(request, data={**request.data, **result})
            if change is not None:
                await changes.apply(conn, change)
            await commands.record(conn, applied)
        return applied, change

    async def _record_refusal(self, request: CommandRecord, exc: DomainError) -> None:
        refused = replace(
            request, outcome="refused", refusal_reason=exc.reason, refusal_message=exc.message
        )
        try:
            async with self._db.transaction() as conn:
                await commands.record(conn, refused)
        except DomainError:  # the database is down: the caller gets the refusal anyway
            log.warning("refusal_not_recorded", run_id=str(request.run_id), type=request.type)


def require_live(run: LockedRun) -> None:
    """Refuses a command on a run that ended: nothing waits any more."""
    if run.status in TERMINAL_RUN_STATUSES:
        raise FailedPrecondition(
            f"run '{run.id}' is {run.status.value}: nothing waits any more",
            reason="RUN_TERMINAL",
            metadata={"run_id": str(run.id), "status": run.status.value},
        )


def _request_hash(request: CommandRecord) -> str:
    """What a command asked, for comparing two uses of one idempotency key."""
    asked = [request.type, request.step, request.data.get("payload")]
    return hashlib.sha256(json.dumps(asked, sort_keys=True).encode()).hexdigest()[:32]
