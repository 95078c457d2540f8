"""No-op workflows the benchmark runs in its worker processes."""

from __future__ import annotations

from typing import Any

from worker_sdk import StepContext, Workflow

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
