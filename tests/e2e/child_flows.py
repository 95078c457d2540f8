"""Workflows of the child-run end-to-end test: a handler of `e2e_parent` starts a run of
`e2e_child` with `ctx.start_child_run`, and a wait_child step waits for its end."""

from __future__ import annotations

from typing import Any

from worker_sdk import Field, NonRetryableError, Retry, StepContext, Workflow

# --- the child ---------------------------------------------------------------------------------

child = Workflow("e2e_child", description="started by a handler of e2e_parent")
child.trigger(
    "manual",
    payload=[Field("n", "integer", required=True), Field("fail", "boolean", default=False)],
)


@child.task(output_key="computed")
def compute(input: dict[str, Any]) -> dict[str, Any]:
    if input["fail"]:
        raise NonRetryableError("the child cannot compute this")
    return {"double": input["n"] * 2}


child.transition("compute", "complete")


# --- the parent --------------------------------------------------------------------------------


parent = Workflow("e2e_parent", description="starts a child run and waits for it")
parent.trigger(
    "manual",
    payload=[
        Field("order", "string", required=True),
        Field("n", "integer", required=True),
        Field("fail", "boolean", default=False),
    ],
)


@parent.task(output_key="spawned", retry=Retry(max_attempts=3, backoff="fixed", initial_delay=0.1))
async def spawn(input: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    """Starts the child keyed by the order; the first attempt is lost right after (its retry
    asks again with the same key and gets the same child)."""
    child_run_id = await ctx.start_child_run(
        "e2e_child", {"n": input["n"], "fail": input["fail"]}, key=input["order"]
    )
    if ctx.attempt_number == 1:
        raise RuntimeError("lost after starting the child")
    return {"child_run_id": child_run_id}


parent.wait_child("await_child", "{order}", output_key="child")


@parent.task(output_key="result")
def finish(input: dict[str, Any]) -> Any:
    return input["child"]["context"]["computed"]["double"]


@parent.task(output_key="recovered")
def recover(input: dict[str, Any]) -> str:
    return "the child failed"


parent.transition("spawn", "await_child")
parent.transition("await_child", "finish")
parent.transition("await_child", "recover", on="error")
parent.transition("finish", "complete")
parent.transition("recover", "complete")
