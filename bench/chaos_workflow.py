"""The workflow the chaos benchmark (`bench.chaos`) runs in its worker processes, and the
ledger of its handler executions.

`chaos_order`: reserve -> charge -> ship -> cool_off (a 200 ms wait) -> notify. Handlers take
10-50 ms, so a killed worker is often mid-step. For a deterministic 10% of runs (each),
`charge` fails its first attempt and is retried after a fixed 50 ms (a short retry, handed
back to its worker) and `ship` fails its first attempt asking `retry_after` 300 ms (a timer,
then Redis). Ten attempts per step: the faults cost attempts (a killed worker's attempt fails
as worker_lost), and a run must never fail for them.

Every handler execution appends one line to the ledger, before doing anything else:
`<run id> <step> <attempt number> <ok|fail>` ("fail": this execution is a planned failure), in
`$CHAOS_LEDGER_DIR/<pid>`, one `write` on a file opened with O_APPEND: a line is whole or
absent even when the process is SIGKILLed."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.workflows import fails_first_attempt
from worker_sdk import Retry, RetryableError, StepContext, Workflow

LEDGER_ENV = "CHAOS_LEDGER_DIR"
HANDLER_STEPS = ("reserve", "charge", "ship", "notify")
FLAKY_STEPS = ("charge", "ship")
ATTEMPTS = Retry(max_attempts=10, backoff="fixed", initial_delay=0.05)

chaos_order = Workflow("chaos_order", description="the chaos benchmark's order")
chaos_order.trigger("manual")

_ledger_fd: int | None = None


def _record(ctx: StepContext, planned_failure: bool) -> None:
    global _ledger_fd
    if _ledger_fd is None:
        path = Path(os.environ[LEDGER_ENV]) / str(os.getpid())
        _ledger_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    line = f"{ctx.run_id} {ctx.step} {ctx.attempt_number} {'fail' if planned_failure else 'ok'}"
    os.write(_ledger_fd, (line + "\n").encode())


def _fails(ctx: StepContext) -> bool:
    return (
        ctx.step in FLAKY_STEPS
        and ctx.attempt_number == 1
        and fails_first_attempt(ctx.run_id, ctx.step)
    )


class PlannedFailure(Exception):
    """A first attempt failing on purpose."""


@chaos_order.task(retry=ATTEMPTS)
async def reserve(input: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    _record(ctx, False)
    await asyncio.sleep(0.02)
    return {"reserved": True}


@chaos_order.task(retry=ATTEMPTS)
async def charge(input: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    failing = _fails(ctx)
    _record(ctx, failing)
    await asyncio.sleep(0.02)
    if failing:
        raise PlannedFailure(f"planned failure of charge in {ctx.run_id}")
    return {"charged": True}


@chaos_order.task(retry=ATTEMPTS)
def ship(input: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    """Sync: runs in the worker's thread pool."""
    failing = _fails(ctx)
    _record(ctx, failing)
    time.sleep(0.05)
    if failing:
        raise RetryableError(f"planned failure of ship in {ctx.run_id}", retry_after=0.3)
    return {"shipped": True}


chaos_order.wait("cool_off", seconds=0.2)


@chaos_order.task(retry=ATTEMPTS)
async def notify(input: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    _record(ctx, False)
    await asyncio.sleep(0.01)
    return {"notified": True}


chaos_order.transition("reserve", "charge")
chaos_order.transition("charge", "ship")
chaos_order.transition("ship", "cool_off")
chaos_order.transition("cool_off", "notify")
chaos_order.transition("notify", "complete")


def read_ledger(directory: Path) -> Counter[tuple[str, str, str]]:
    """Executions by (run id, step, "ok" or "fail"), from every worker's ledger file."""
    executions: Counter[tuple[str, str, str]] = Counter()
    for path in directory.iterdir():
        for line in path.read_text().splitlines():
            run_id, step, _attempt, planned = line.split()
            executions[(run_id, step, planned)] += 1
    return executions
