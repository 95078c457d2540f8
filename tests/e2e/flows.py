"""Workflows the end-to-end tests run in real worker processes.

Handlers append one line per invocation to `<marks>/<step>-<run marker>` files when the payload
names a `marks` directory, so tests can count handler executions across processes."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from tests.e2e.marks import append_mark
from worker_sdk import Field, Retry, StepContext, Workflow, when


def _mark(input: dict[str, Any], ctx: StepContext) -> None:
    marks = input.get("marks")
    if marks:
        append_mark(marks, ctx.step, ctx.run_id, f"{ctx.attempt_number} {os.getpid()}")


# --- branching -----------------------------------------------------------------------------------

branching = Workflow("e2e_branching", description="conditional transitions")
branching.trigger(
    "manual",
    payload=[Field("score", "integer", required=True), Field("marks", "string", default="")],
)


@branching.task(output_key="scored")
def score(input: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    _mark(input, ctx)
    return {"score": input["score"]}


@branching.task(output_key="high")
def high(input: dict[str, Any], ctx: StepContext) -> str:
    return "high"


@branching.task(output_key="low")
def low(input: dict[str, Any], ctx: StepContext) -> str:
    return "low"


branching.transition("score", "high", when=when("scored.score").greater_than(50))
branching.transition("score", "low", when=when("scored.score").less_than(10))
branching.transition("high", "complete")
branching.transition("low", "complete")
# 10..50 matches nothing: the run fails with no_matching_transition.


# --- slow steps: worker and server crashes, duplicate deliveries -----------------------------

slow = Workflow("e2e_slow", description="steps that take a while")
slow.trigger(
    "manual",
    payload=[
        Field("seconds", "number", default=0.5),
        Field("marks", "string", default=""),
    ],
)


@slow.task(
    output_key="first",
    heartbeat_timeout=2,
    retry=Retry(max_attempts=3, backoff="fixed", initial_delay=0.1),
)
async def first(input: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    _mark(input, ctx)
    await asyncio.sleep(input["seconds"])
    return {"pid": os.getpid()}


@slow.task(
    output_key="second",
    heartbeat_timeout=2,
    retry=Retry(max_attempts=3, backoff="fixed", initial_delay=0.1),
)
def second(input: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    _mark(input, ctx)
    time.sleep(input["seconds"])
    return {"pid": os.getpid()}


slow.transition("first", "second")
slow.transition("second", "complete")


# --- versioning ---------------------------------------------------------------------------------

versioned = Workflow("e2e_versioned", description="registered twice with different content")
versioned.trigger("manual", payload=[Field("seconds", "number", default=0.0)])


@versioned.task(output_key="v1")
async def v1_step(input: dict[str, Any], ctx: StepContext) -> str:
    await asyncio.sleep(input["seconds"])
    return "one"


versioned.transition("v1_step", "complete")


# --- dependencies -------------------------------------------------------------------------------

diamond = Workflow("e2e_diamond", description="a -> (b, c) -> d with `after`")
diamond.trigger("manual", payload=[Field("seconds", "number", default=0.3)])


@diamond.task(output_key="a")
def fan_out(input: dict[str, Any], ctx: StepContext) -> int:
    return 1


@diamond.task(output_key="b", after=["fan_out"])
async def left(input: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    await asyncio.sleep(input["seconds"])
    return {"pid": os.getpid(), "at": time.time()}


@diamond.task(output_key="c", after=["fan_out"])
async def right(input: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    await asyncio.sleep(input["seconds"])
    return {"pid": os.getpid(), "at": time.time()}


@diamond.task(output_key="d", after=["left", "right"])
def join(input: dict[str, Any], ctx: StepContext) -> list[int]:
    return [input["a"], input["b"]["pid"], input["c"]["pid"]]
