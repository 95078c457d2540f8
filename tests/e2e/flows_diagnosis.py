"""A workflow whose one step runs until the test releases it (a file appears): the e2e
diagnosis tests keep a real worker busy with it for as long as they need."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from worker_sdk import Field, StepContext, Workflow

held = Workflow("e2e_held", description="one step that runs until released")
held.trigger("manual", payload=[Field("release", "string", required=True)])


@held.task(output_key="held")
def hold(input: dict[str, Any], ctx: StepContext) -> str:
    # Sync: it runs in the worker's thread pool, and the worker heartbeats meanwhile.
    while not Path(input["release"]).exists():
        time.sleep(0.05)
    return "released"
