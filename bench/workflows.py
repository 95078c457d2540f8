"""Workflows the benchmark runs in its worker processes: no-op chains of 1, 3 and 10 steps,
and a 3-step chain whose steps fail their first attempt for a deterministic 10% of
(run, step) pairs."""

from __future__ import annotations

import hashlib
from typing import Any

from worker_sdk import Retry, StepContext, Workflow

noop3 = Workflow("bench_noop3", description="three no-op steps")
noop3.trigger("manual")


@noop3.task()
async def a(input: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    return {"a": 1}


@noop3.task()
async def b(input: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    return {"b": 2}


@noop3.task()
async def c(input: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    return {"c": 3}


noop3.transition("a", "b")
noop3.transition("b", "c")
noop3.transition("c", "complete")

noop1 = Workflow("bench_noop1", description="one no-op step")
noop1.trigger("manual")


@noop1.task()
async def only(input: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    return {"ok": True}


noop1.transition("only", "complete")

NOOP10_STEPS = 10
noop10 = Workflow("bench_noop10", description="ten no-op steps, s1 -> s2 -> ... -> s10")
noop10.trigger("manual")


async def _noop(input: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    return {ctx.step: 1}


for _i in range(1, NOOP10_STEPS + 1):
    noop10.task(name=f"s{_i}")(_noop)
    noop10.transition(f"s{_i}", f"s{_i + 1}" if _i < NOOP10_STEPS else "complete")

FAIL_PERCENT = 10
RETRY_DELAY_MS = 10
FLAKY_RETRY = Retry(max_attempts=3, backoff="fixed", initial_delay=RETRY_DELAY_MS / 1000)
FLAKY_STEPS = ("a", "b", "c")
flaky3 = Workflow("bench_flaky3", description="three no-op steps, 10% fail their first attempt")
flaky3.trigger("manual")


def fails_first_attempt(run_id: str, step: str) -> bool:
    """True for a deterministic FAIL_PERCENT % of (run, step) pairs."""
    digest = hashlib.sha256(f"{run_id}/{step}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % 100 < FAIL_PERCENT


class FlakyStepError(Exception):
    """The planned failure of a first attempt."""


async def _flaky(input: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    if ctx.attempt_number == 1 and fails_first_attempt(ctx.run_id, ctx.step):
        raise FlakyStepError(f"planned failure of {ctx.step} in {ctx.run_id}")
    return {ctx.step: 1}


for _step, _next in zip(FLAKY_STEPS, (*FLAKY_STEPS[1:], "complete"), strict=True):
    flaky3.task(name=_step, retry=FLAKY_RETRY)(_flaky)
    flaky3.transition(_step, _next)

approval = Workflow("bench_approval", description="a task, an approval, a task")
approval.trigger("manual")


@approval.task()
async def prepare(input: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    return {"prepared": True}


approval.approval("review")


@approval.task()
async def carry_out(input: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    return {"done": True}


approval.transition("prepare", "review")
approval.transition("review", "carry_out")
approval.transition("review", "complete", on="error")
approval.transition("carry_out", "complete")
