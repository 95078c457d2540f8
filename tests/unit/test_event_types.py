"""Every run event type the engine writes has its RunEventType in the contract: an event
without one makes WatchRun and GetRunHistory answer INTERNAL for its run."""

from __future__ import annotations

import re
from pathlib import Path

from squidmesh.v1 import run_pb2

SERVER = Path(__file__).resolve().parents[2] / "server"
_WRITTEN = re.compile(r'(?:NewEvent\(\s*|_note\(conn, )"([a-z_]+)"')
"""Event types as the engine's code writes them (`NewEvent`, `_note`)."""


def test_every_event_type_the_engine_writes_is_in_the_contract() -> None:
    written = {
        m.group(1) for path in SERVER.rglob("*.py") for m in _WRITTEN.finditer(path.read_text())
    }
    assert {"run_created", "attempt_progress", "step_waiting"} <= written  # it scans
    missing = sorted(t for t in written if not hasattr(run_pb2, f"RUN_EVENT_TYPE_{t.upper()}"))
    assert missing == []
