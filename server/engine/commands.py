"""The engine: every command the API and the timer loop call, on one object.

Each command is a fenced conditional update, a pure decision (planner, retry policy) and one
`RunChange` with its events, in one statement or one transaction; dispatches are published only
after commit (outbox: the attempt rows are the intents; the reconciler re-publishes)."""

from __future__ import annotations

from server.engine.attempt_commands import AttemptCommands
from server.engine.core import EngineConfig, Publish, Wakeups
from server.engine.gate_commands import GateCommands
from server.engine.run_commands import RunCommands

__all__ = ["Engine", "EngineConfig", "Publish", "Wakeups"]


class Engine(RunCommands, AttemptCommands, GateCommands):
    """Workflow and run commands, the worker protocol's, and the gates'."""
