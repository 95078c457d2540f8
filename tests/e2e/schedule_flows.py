"""The workflow of the schedule end-to-end tests that needs a worker: one step that holds its
run until the test releases it, so that a schedule's run stays active for as long as the test
says (overlap policies). The worker registers it with a manual trigger only; the tests register
the next version with the cron triggers they need (`held_definition`)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from google.protobuf import struct_pb2
from squidmesh.v1 import workflow_pb2

from tests.e2e.marks import append_mark
from worker_sdk import Field, StepContext, Workflow

held = Workflow("e2e_sched_held", description="a step held until the test releases its run")
held.trigger("manual", payload=[Field("marks", "string", required=True)])


def release(marks: Path, run_id: str) -> None:
    """Lets the held step of `run_id` finish."""
    (marks / f"release-{run_id}").touch()


def release_all(marks: Path) -> None:
    """Lets every held step finish, now and from now on."""
    (marks / "release-all").touch()


@held.task(heartbeat_timeout=5)
async def hold(input: dict[str, Any], ctx: StepContext) -> None:
    marks = Path(input["marks"])
    append_mark(marks, ctx.step, ctx.run_id, str(ctx.attempt_number))
    while True:
        if any((marks / name).exists() for name in (f"release-{ctx.run_id}", "release-all")):
            return
        await asyncio.sleep(0.05)


held.transition("hold", "complete")


def held_definition(
    marks: Path, **triggers: workflow_pb2.CronTrigger
) -> workflow_pb2.WorkflowDefinition:
    """The next version of `held`: the same steps, plus `triggers` (by name), whose runs hold
    in `marks`."""
    definition = held.definition()
    for name, spec in triggers.items():
        definition.triggers.add(
            name=name,
            cron=spec,
            payload=[
                workflow_pb2.PayloadField(
                    name="marks",
                    type=workflow_pb2.FIELD_TYPE_STRING,
                    default_value=struct_pb2.Value(string_value=str(marks)),
                )
            ],
        )
    return definition
