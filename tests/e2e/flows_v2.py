"""Version 2 of `e2e_versioned`: a different step, on a queue of its own so only workers that
have its handler receive it."""

from __future__ import annotations

from typing import Any

from worker_sdk import Field, StepContext, Workflow

versioned = Workflow("e2e_versioned", description="registered twice with different content")
versioned.trigger("manual", payload=[Field("seconds", "number", default=0.0)])


@versioned.task(output_key="v2", queue="v2")
def v2_step(input: dict[str, Any], ctx: StepContext) -> str:
    return "two"


versioned.transition("v2_step", "complete")
