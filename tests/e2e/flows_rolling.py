"""A workflow only newer workers have, on the queue of `e2e_slow`, which older workers (with
`tests.e2e.flows`) consume too: what a rolling deploy looks like to a shared queue."""

from __future__ import annotations

from typing import Any

from worker_sdk import StepContext, Workflow

rolling = Workflow("e2e_rolling", description="a step only the newer workers can run")
rolling.trigger("manual")


@rolling.task(output_key="new", queue="e2e_slow")
async def new_step(input: dict[str, Any], ctx: StepContext) -> str:
    return "new"


rolling.transition("new_step", "complete")
