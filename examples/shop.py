import os
import random
from typing import Any

from worker_sdk import (
    Field,
    NonRetryableError,
    Retry,
    RetryableError,
    StepContext,
    Worker,
    Workflow,
    when,
)

order = Workflow("order", description="Reserve stock, charge, ship")
order.trigger(  # the first trigger is the default one
    "manual",
    payload=[  # checked on StartRun; all problems reported together
        Field("order_id", "string", required=True),
        Field("sku", "string", required=True),
        Field("quantity", "integer", default=1),
        Field("express", "boolean", default=False),
    ],
)


# Sync handlers run in the worker's thread pool. The signature is (input) or (input, ctx).
# input=[keys] picks top-level keys of the run context; output_key puts the output there.
@order.task(queue="orders", output_key="stock", input=["sku", "quantity"])
def reserve(input: dict[str, Any]) -> dict[str, Any]:
    if input["quantity"] > 100:
        raise NonRetryableError("quantity above 100", {"quantity": input["quantity"]})
    return {"reserved": input["quantity"], "warehouse": "ams-1"}


# input={name: dotted.path} builds the input from paths into the context.
@order.task(
    queue="payments",
    output_key="charge",
    input={"order": "order_id", "qty": "stock.reserved"},
    retry=Retry(
        max_attempts=5,
        backoff="exponential",
        initial_delay=0.5,
        max_delay=30,
        non_retryable=[PermissionError],
    ),
)
async def charge(input: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    if ctx.attempt_number == 1 and random.random() < 0.3:  # the provider is busy at times
        raise RetryableError("provider busy", retry_after=1.0)  # overrides the backoff once
    # ctx.idempotency_key is the same for every attempt of this step in this run.
    return {"charge_id": f"ch-{ctx.idempotency_key}", "amount": 10 * input["qty"]}


@order.task(queue="orders", output_key="shipment", input=["order_id", "stock"])
async def ship_express(input: dict[str, Any]) -> dict[str, Any]:
    return {"carrier": "courier"}


@order.task(queue="orders", output_key="shipment", input=["order_id", "stock"])
def ship_standard(input: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    for box in range(3):
        ctx.raise_if_cancelled()  # stop between units of work if cancelled
        ctx.heartbeat({"boxes_packed": box + 1})  # progress, sent with the next heartbeat
    return {"carrier": "post"}


@order.task(queue="orders", input=["order_id"])
def notify_failure(input: dict[str, Any]) -> None:
    print("could not reserve stock for", input["order_id"])


order.transition("reserve", "charge")
order.transition("reserve", "notify_failure", on="error")  # taken when reserve fails for good
order.transition("charge", "ship_express", when=when("express").equals(True))  # tried first
order.transition("charge", "ship_standard")  # then the unconditional one
order.transition("ship_express", "complete")
order.transition("ship_standard", "complete")
order.transition("notify_failure", "complete")

if __name__ == "__main__":
    # The server's address, like the squidmesh command: $SQUIDMESH_ADDRESS or the default.
    server = os.environ.get("SQUIDMESH_ADDRESS", "127.0.0.1:50051")
    Worker(server, [order], concurrency=20).run_sync()
