"""Workflows of the cancel and replay end-to-end tests, run in real worker processes.

Handlers append one line per event (`started`, `cancelled`, `finished ...`) to
`<marks>/<step>-<run id>` files when the payload names a `marks` directory, so the tests see
what each handler did (and whether it ran at all) from another process.

Every task step has a retry policy that would retry quickly: a cancel mistaken for a failure
would show up as a further attempt."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from tests.e2e.marks import append_mark
from worker_sdk import Field, Retry, RetryableError, StepContext, Workflow

QUICK_RETRY = Retry(max_attempts=3, backoff="fixed", initial_delay=0.1)
WAIT_SECONDS = 3.0
"""How long `e2e_cancel_wait` waits in its wait step: the test sees the run waiting and
cancels it in about 0.1 s, a few tenths on a busy machine; this leaves room for far more."""
RETRY_DELAY = 3.0
"""The backoff of `e2e_cancel_retry` before its second attempt (room as for WAIT_SECONDS)."""
IGNORED_LEASE = 2.0
"""The heartbeat timeout (lease) of the step that ignores cancellation."""
LONG_LEASE = 60.0
"""The lease of the steps that honour cancellation: long, so the worker heartbeats them rarely
(every min(heartbeat interval, lease / 3)) and only the pushed cancel can stop them quickly."""


def mark(input: dict[str, Any], ctx: StepContext, what: str) -> None:
    marks = input.get("marks")
    if marks:
        line = f"{what} {ctx.attempt_number} {os.getpid()} {time.time():.3f}"
        append_mark(marks, ctx.step, ctx.run_id, line)


def _payload(*extra: Field) -> list[Field]:
    return [Field("marks", "string", default=""), Field("seconds", "number", default=30), *extra]


# --- pending: registered by the test before any worker runs -------------------------------------

pending = Workflow("e2e_cancel_pending", description="one quick step")
pending.trigger("manual", payload=_payload())


@pending.task(output_key="done", retry=QUICK_RETRY)
def only(input: dict[str, Any], ctx: StepContext) -> str:
    mark(input, ctx, "started")
    return "done"


# --- waiting ------------------------------------------------------------------------------------

waiting = Workflow("e2e_cancel_wait", description="a step, a durable wait, a step")
waiting.trigger("manual", payload=_payload())


@waiting.task(output_key="before", retry=QUICK_RETRY)
def before_wait(input: dict[str, Any], ctx: StepContext) -> str:
    mark(input, ctx, "started")
    return "before"


waiting.wait("hold", seconds=WAIT_SECONDS)


@waiting.task(output_key="after", retry=QUICK_RETRY)
def after_wait(input: dict[str, Any], ctx: StepContext) -> str:
    mark(input, ctx, "started")
    return "after"


waiting.transition("before_wait", "hold")
waiting.transition("hold", "after_wait")
waiting.transition("after_wait", "complete")


# --- retrying -----------------------------------------------------------------------------------

retrying = Workflow("e2e_cancel_retry", description="a step that always fails, slow backoff")
retrying.trigger("manual", payload=_payload())


@retrying.task(retry=Retry(max_attempts=3, backoff="fixed", initial_delay=RETRY_DELAY))
def flaky(input: dict[str, Any], ctx: StepContext) -> None:
    mark(input, ctx, "started")
    raise RetryableError("provider down")


# --- running: an async handler, a sync handler polling its cancel flag, one ignoring it --------

running_async = Workflow("e2e_cancel_async", description="an async handler that sleeps")
running_async.trigger("manual", payload=_payload())


@running_async.task(output_key="slept", retry=QUICK_RETRY, heartbeat_timeout=LONG_LEASE)
async def sleeper(input: dict[str, Any], ctx: StepContext) -> str:
    mark(input, ctx, "started")
    try:
        await asyncio.sleep(input["seconds"])
    except asyncio.CancelledError:
        mark(input, ctx, "cancelled")
        raise
    mark(input, ctx, "finished")
    return "slept"


@running_async.task(retry=QUICK_RETRY)
def after_sleeper(input: dict[str, Any], ctx: StepContext) -> None:
    mark(input, ctx, "started")


running_async.transition("sleeper", "after_sleeper")


running_sync = Workflow("e2e_cancel_sync", description="a sync handler polling ctx.cancelled")
running_sync.trigger("manual", payload=_payload())


@running_sync.task(output_key="polled", retry=QUICK_RETRY, heartbeat_timeout=LONG_LEASE)
def poller(input: dict[str, Any], ctx: StepContext) -> str:
    mark(input, ctx, "started")
    deadline = time.monotonic() + input["seconds"]
    while time.monotonic() < deadline:
        if ctx.cancelled:
            mark(input, ctx, "cancelled")
            ctx.raise_if_cancelled()
        time.sleep(0.02)
    mark(input, ctx, "finished")
    return "polled"


@running_sync.task(retry=QUICK_RETRY)
def after_poller(input: dict[str, Any], ctx: StepContext) -> None:
    mark(input, ctx, "started")


running_sync.transition("poller", "after_poller")


ignoring = Workflow("e2e_cancel_ignored", description="a sync handler that ignores cancel")
ignoring.trigger("manual", payload=_payload())


@ignoring.task(output_key="stubborn", retry=QUICK_RETRY, heartbeat_timeout=IGNORED_LEASE)
def stubborn(input: dict[str, Any], ctx: StepContext) -> str:
    mark(input, ctx, "started")
    time.sleep(input["seconds"])  # never looks at ctx.cancelled
    mark(input, ctx, f"finished cancelled={ctx.cancelled}")
    return "done anyway"


@ignoring.task(retry=QUICK_RETRY)
def after_stubborn(input: dict[str, Any], ctx: StepContext) -> None:
    mark(input, ctx, "started")


ignoring.transition("stubborn", "after_stubborn")


# --- replay -------------------------------------------------------------------------------------

replayable = Workflow("e2e_cancel_replay", description="prepare, then an irreversible charge")
for _trigger in ("manual", "api"):
    replayable.trigger(
        _trigger,
        payload=_payload(
            Field("order", "string", required=True), Field("note", "string", default="none")
        ),
    )


@replayable.task(output_key="prepared", retry=QUICK_RETRY)
def prepare(input: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    mark(input, ctx, "started")
    return {"order": input["order"], "note": input["note"]}


@replayable.task(output_key="charged", irreversible=True, retry=QUICK_RETRY)
async def charge(input: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    mark(input, ctx, "started")
    return {"charge": f"ch-{ctx.idempotency_key}", "version": 1}


replayable.transition("prepare", "charge")
replayable.transition("charge", "complete")
