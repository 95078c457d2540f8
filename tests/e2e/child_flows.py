"""Workflows of the child-run end-to-end test. A handler of `e2e_parent` starts a run of
`e2e_child` with StartRun(parent_run_id, parent_step, key): what `ctx.start_child_run` sends
(the SDK's helper and the DSL's wait_child step come from another branch; until they land, the
handler sends the request itself and the definition adds its wait_child step)."""

from __future__ import annotations

from typing import Any

from grpc import aio
from squidmesh.v1 import run_service_pb2, workflow_pb2
from squidmesh.v1.run_service_pb2_grpc import RunServiceStub

from worker_sdk import Field, NonRetryableError, Retry, StepContext, Workflow, to_struct

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


class _ParentWorkflow(Workflow):
    """A workflow whose definition has a wait_child step `await_child` (output key `child`)
    waiting for the child keyed by the payload's `order`."""

    def definition(self) -> workflow_pb2.WorkflowDefinition:
        definition = super().definition()
        definition.steps.add(
            name="await_child",
            output_key="child",
            wait_child=workflow_pb2.WaitChildStep(key="{order}"),
        )
        return definition


parent = _ParentWorkflow("e2e_parent", description="starts a child run and waits for it")
parent.trigger(
    "manual",
    payload=[
        Field("order", "string", required=True),
        Field("n", "integer", required=True),
        Field("fail", "boolean", default=False),
        Field("server", "string", required=True),
    ],
)


@parent.task(output_key="spawned", retry=Retry(max_attempts=3, backoff="fixed", initial_delay=0.1))
async def spawn(input: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    """Starts the child keyed by the order; the first attempt is lost right after (its retry
    asks again with the same key and gets the same child)."""
    async with aio.insecure_channel(input["server"]) as channel:
        response = await RunServiceStub(channel).StartRun(
            run_service_pb2.StartRunRequest(
                workflow="e2e_child",
                payload=to_struct({"n": input["n"], "fail": input["fail"]}),
                idempotency_key=input["order"],
                parent_run_id=ctx.run_id,
                parent_step=ctx.step,
            )
        )
    if ctx.attempt_number == 1:
        raise RuntimeError("lost after starting the child")
    return {"child_run_id": response.run.id, "created": response.created}


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
