"""Workflows of the failure-semantics end-to-end tests (retries, backoff, timeouts, leases,
waits, log steps, error routes, compensation), run in real worker processes.

Handlers append one line per invocation ("<attempt number> <pid>") to `<marks>/<step>-<run id>`
when the payload names a `marks` directory, so tests can count executions across processes.
Saga handlers also append "<step> <attempt number>" to `<marks>/journal-<run id>`, which gives
the order of every execution of the run. Compensations are marked under their own step name,
"<step>:compensate"."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

from tests.e2e.marks import append_mark
from worker_sdk import (
    Field,
    NonRetryableError,
    Retry,
    RetryableError,
    StepContext,
    Workflow,
)


def _marks_dir(input: dict[str, Any]) -> str:
    """The marks directory of a step's input, or of a compensation's ({"input", "output"})."""
    marks = input.get("marks")
    if not marks and isinstance(input.get("input"), dict):
        marks = input["input"].get("marks")
    return str(marks or "")


def _mark(input: dict[str, Any], ctx: StepContext, suffix: str = "") -> None:
    marks = _marks_dir(input)
    if marks:
        append_mark(marks, ctx.step + suffix, ctx.run_id, f"{ctx.attempt_number} {os.getpid()}")


def _journal(input: dict[str, Any], ctx: StepContext, extra: Any = None) -> None:
    marks = _marks_dir(input)
    if marks:
        with (Path(marks) / f"journal-{ctx.run_id}").open("a") as f:
            f.write(json.dumps([ctx.step, ctx.attempt_number, extra]) + "\n")


_MARKS = Field("marks", "string", default="")


# --- retries: fail N times, then succeed ---------------------------------------------------------

retries = Workflow("f_retries", description="fails `failures` times, then succeeds")
retries.trigger("manual", payload=[Field("failures", "integer", default=2), _MARKS])


@retries.task(
    output_key="flaky",
    retry=Retry(max_attempts=3, backoff="fixed", initial_delay=0.05),
)
def flaky(input: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    _mark(input, ctx)
    if ctx.attempt_number <= input["failures"]:
        raise ValueError(f"flaky failure on attempt {ctx.attempt_number}")
    return {"attempt": ctx.attempt_number}


retries.transition("flaky", "complete")


# --- dispatch latency: one step that returns at once ------------------------------------------

quick = Workflow("f_quick", description="one step that returns at once")
quick.trigger("manual", payload=[])


@quick.task()
def at_once(input: dict[str, Any]) -> None:
    """Measures what it costs right now to dispatch a step (tests widen timing windows by it)."""


quick.transition("at_once", "complete")


# --- error routes --------------------------------------------------------------------------------


class UnavailableError(Exception):
    """A retryable error of the tests' own."""


def _doomed(input: dict[str, Any], ctx: StepContext) -> None:
    _mark(input, ctx)
    raise UnavailableError(f"doomed attempt {ctx.attempt_number}")


routed = Workflow("f_error_route", description="an exhausted step routes to a fallback step")
routed.trigger("manual", payload=[_MARKS])
routed.task(name="doomed", retry=Retry(max_attempts=2, backoff="fixed", initial_delay=0.05))(
    _doomed
)


@routed.task(output_key="fallback")
def fallback(input: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    _mark(input, ctx)
    return {"recovered": True}


@routed.task(output_key="celebrated")
def celebrate(input: dict[str, Any], ctx: StepContext) -> str:
    _mark(input, ctx)
    return "never"


routed.transition("doomed", "celebrate")
routed.transition("doomed", "fallback", on="error")
routed.transition("celebrate", "complete")
routed.transition("fallback", "complete")

routed_done = Workflow("f_error_complete", description="an exhausted step routes to complete")
routed_done.trigger("manual", payload=[_MARKS])
routed_done.task(name="doomed", retry=Retry(max_attempts=2, backoff="fixed", initial_delay=0.05))(
    _doomed
)


@routed_done.task(name="celebrate", output_key="celebrated")
def celebrate_done(input: dict[str, Any], ctx: StepContext) -> str:
    _mark(input, ctx)
    return "never"


routed_done.transition("doomed", "celebrate")
routed_done.transition("doomed", "complete", on="error")
routed_done.transition("celebrate", "complete")


# --- backoff -------------------------------------------------------------------------------------

backoff = Workflow("f_backoff", description="exponential backoff 100, 200, 400 ms")
backoff.trigger("manual", payload=[Field("failures", "integer", default=3), _MARKS])


@backoff.task(
    output_key="backoff",
    retry=Retry(
        max_attempts=4,
        backoff="exponential",
        initial_delay=0.1,
        multiplier=2.0,
        max_delay=10,
        jitter=0.0,
    ),
)
async def backs_off(input: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    _mark(input, ctx)
    if ctx.attempt_number <= input["failures"]:
        raise RuntimeError(f"backoff failure {ctx.attempt_number}")
    return {"attempt": ctx.attempt_number}


backoff.transition("backs_off", "complete")

retry_after = Workflow("f_retry_after", description="retry_after overrides a 5 s backoff")
retry_after.trigger("manual", payload=[_MARKS])


@retry_after.task(
    output_key="patient",
    retry=Retry(max_attempts=3, backoff="fixed", initial_delay=5.0),
)
async def patient(input: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    _mark(input, ctx)
    if ctx.attempt_number == 1:
        raise RetryableError("busy: try again in 300 ms", retry_after=0.3)
    return {"attempt": ctx.attempt_number}


retry_after.transition("patient", "complete")


class DeclinedError(Exception):
    """Listed as non-retryable by the step's policy."""


picky = Workflow("f_non_retryable", description="non-retryable errors skip the retries")
picky.trigger("manual", payload=[Field("kind", "string", required=True), _MARKS])


@picky.task(
    retry=Retry(max_attempts=4, backoff="fixed", initial_delay=0.05, non_retryable=[DeclinedError]),
)
def choosy(input: dict[str, Any], ctx: StepContext) -> None:
    _mark(input, ctx)
    kind = input["kind"]
    if kind == "sdk":
        raise NonRetryableError("will never work", {"code": 7})
    if kind == "listed":
        raise DeclinedError("card declined")
    raise ValueError(f"transient trouble {ctx.attempt_number}")


picky.transition("choosy", "complete")


# --- attempt timeouts and leases -----------------------------------------------------------------

timeouts = Workflow("f_timeout", description="attempt 1 overruns its 0.5 s timeout")
timeouts.trigger("manual", payload=[Field("seconds", "number", default=10.0), _MARKS])


@timeouts.task(
    output_key="sleepy",
    attempt_timeout=0.5,
    retry=Retry(max_attempts=2, backoff="fixed", initial_delay=0.05),
)
async def sleepy(input: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    _mark(input, ctx)
    if ctx.attempt_number == 1:
        await asyncio.sleep(input["seconds"])
        _mark(input, ctx, ":late")
    return {"attempt": ctx.attempt_number}


timeouts.transition("sleepy", "complete")

timeouts_sync = Workflow(
    "f_timeout_sync", description="a sync attempt 1 ignores its 0.5 s timeout and returns late"
)
timeouts_sync.trigger("manual", payload=[Field("seconds", "number", default=1.5), _MARKS])


@timeouts_sync.task(
    output_key="stubborn",
    attempt_timeout=0.5,
    retry=Retry(max_attempts=2, backoff="fixed", initial_delay=0.05),
)
def stubborn(input: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    _mark(input, ctx)
    if ctx.attempt_number == 1:
        time.sleep(input["seconds"])  # ignores the cancellation: returns a late result
        _mark(input, ctx, ":late")
    return {"attempt": ctx.attempt_number, "pid": os.getpid()}


timeouts_sync.transition("stubborn", "complete")

lease = Workflow("f_lease", description="a 1 s lease; attempt 1 sleeps")
lease.trigger("manual", payload=[Field("seconds", "number", default=2.0), _MARKS])


@lease.task(
    output_key="stalls",
    heartbeat_timeout=1.0,
    retry=Retry(max_attempts=2, backoff="fixed", initial_delay=0.1),
)
def stalls(input: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    _mark(input, ctx)
    if ctx.attempt_number == 1:
        time.sleep(input["seconds"])
        _mark(input, ctx, ":late")
    return {"attempt": ctx.attempt_number, "pid": os.getpid()}


lease.transition("stalls", "complete")


# --- wait and log steps --------------------------------------------------------------------------


def _stamp(input: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    _mark(input, ctx)
    return {"pid": os.getpid(), "at": time.time()}


short_wait = Workflow("f_wait", description="before, a 300 ms wait, after")
short_wait.trigger("manual", payload=[_MARKS])
short_wait.task(name="before", output_key="before")(_stamp)
short_wait.wait("hold", seconds=0.3)
short_wait.task(name="after", output_key="after")(_stamp)
short_wait.transition("before", "hold")
short_wait.transition("hold", "after")
short_wait.transition("after", "complete")

LONG_WAIT_SECONDS = float(os.environ.get("E2E_LONG_WAIT_SECONDS", "3"))
"""The wait of f_long_wait: the test that kills the server during it chooses it (it must
outlast a server restart, which it measures first) and starts the worker with it."""

long_wait = Workflow("f_long_wait", description="before, a long wait, after")
long_wait.trigger("manual", payload=[_MARKS])
long_wait.task(name="before", output_key="before")(_stamp)
long_wait.wait("hold", seconds=LONG_WAIT_SECONDS)
long_wait.task(name="after", output_key="after")(_stamp)
long_wait.transition("before", "hold")
long_wait.transition("hold", "after")
long_wait.transition("after", "complete")

logged = Workflow("f_log", description="a log step rendered from the context")
logged.trigger(
    "manual",
    payload=[
        Field("order_id", "string", required=True),
        Field("who", "string", required=True),
        Field("quantity", "integer", default=2),
    ],
)


@logged.task(output_key="greeting", input=["who"])
def greet(input: dict[str, Any]) -> dict[str, Any]:
    return {"name": input["who"].title(), "items": 3}


logged.log(
    "announce",
    "hello {greeting.name}: order {order_id} ({quantity} ordered) has {greeting.items} items",
)


@logged.task(name="close", output_key="closed")
def close_order(input: dict[str, Any]) -> bool:
    return True


logged.transition("greet", "announce")
logged.transition("announce", "close")
logged.transition("close", "complete")


# --- compensation (saga) -------------------------------------------------------------------------

saga = Workflow("f_saga", description="4 steps; step 4 fails; 3, 2, 1 are compensated")
saga.trigger("manual", payload=[Field("order", "string", required=True), _MARKS])
_SAGA_RETRY = Retry(max_attempts=3, backoff="fixed", initial_delay=0.05)


def _undo(input: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    _mark(input, ctx)
    _journal(input, ctx, input)
    return {"undone": input["output"]["done"]}


def undo_reserve(input: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    return _undo(input, ctx)


def undo_charge(input: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    if ctx.attempt_number == 1:
        _mark(input, ctx)
        _journal(input, ctx, "failed")
        raise ConnectionError("refund service unreachable")
    return _undo(input, ctx)


async def undo_ship(input: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    return _undo(input, ctx)


def _do(input: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    _mark(input, ctx)
    _journal(input, ctx)
    return {"done": f"{ctx.step}:{input['order']}"}


saga.task(name="reserve", output_key="reserve", retry=_SAGA_RETRY, compensate=undo_reserve)(_do)
saga.task(name="charge", output_key="charge", retry=_SAGA_RETRY, compensate=undo_charge)(_do)
saga.task(name="ship", output_key="ship", retry=_SAGA_RETRY, compensate=undo_ship)(_do)


@saga.task(retry=_SAGA_RETRY)
def confirm(input: dict[str, Any], ctx: StepContext) -> None:
    _mark(input, ctx)
    _journal(input, ctx)
    raise NonRetryableError("confirmation refused", {"order": input["order"]})


saga.transition("reserve", "charge")
saga.transition("charge", "ship")
saga.transition("ship", "confirm")
saga.transition("confirm", "complete")


# --- progress: heartbeat details -----------------------------------------------------------------

progress = Workflow("f_progress", description="reports progress while it works")
progress.trigger("manual", payload=[Field("seconds", "number", default=3.0)])


@progress.task(heartbeat_timeout=2)
async def crunch(input: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    ctx.heartbeat({"rows": 1200, "phase": "loading"})
    await asyncio.sleep(input["seconds"])
    return {"rows": 1200}


# --- an output larger than the server reads ------------------------------------------------------

huge = Workflow("f_huge_output", description="returns more than an attempt-stream message holds")
huge.trigger("manual", payload=[Field("mib", "integer", default=20)])


@huge.task(retry=Retry(max_attempts=3, initial_delay=0.01))
def bloat(input: dict[str, Any]) -> str:
    mib: int = input["mib"]
    return "x" * (mib << 20)
