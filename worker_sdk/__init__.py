"""Squid Mesh Python SDK: define workflows, run their steps in worker processes, and drive
runs from Python.

    from worker_sdk import Field, Retry, StepContext, Worker, Workflow, when

    payment = Workflow("payment", description="Charge a card")
    payment.trigger("manual", payload=[Field("amount", "number", required=True)])

    @payment.task(queue="payments", retry=Retry(max_attempts=3))
    async def charge(input: dict, ctx: StepContext) -> dict:
        return {"charged": input["amount"]}

    payment.transition("charge", "complete")

    if __name__ == "__main__":
        Worker("127.0.0.1:50051", [payment]).run_sync()
"""

from squidmesh.client import (
    AsyncClient,
    Client,
    is_terminal,
    run_status,
    run_status_name,
)
from squidmesh.values import struct_to_dict, to_struct, to_value, value_to_python

from worker_sdk.conditions import Condition, when
from worker_sdk.context import StepContext
from worker_sdk.errors import AttemptCancelledError, NonRetryableError, RetryableError
from worker_sdk.fields import Field
from worker_sdk.logs import configure_logging
from worker_sdk.retry import Retry
from worker_sdk.worker import Worker
from worker_sdk.workflow import COMPLETE, Workflow

__all__ = [
    "COMPLETE",
    "AsyncClient",
    "AttemptCancelledError",
    "Client",
    "Condition",
    "Field",
    "NonRetryableError",
    "Retry",
    "RetryableError",
    "StepContext",
    "Worker",
    "Workflow",
    "configure_logging",
    "is_terminal",
    "run_status",
    "run_status_name",
    "struct_to_dict",
    "to_struct",
    "to_value",
    "value_to_python",
    "when",
]
