"""The engine: every command the API and the timer loop call, on one object.

Each command is a fenced conditional update, a pure decision (planner, retry policy) and one
`RunChange` with its events, in one statement or one transaction; dispatches are published only
after commit (outbox: the attempt rows are the intents; the reconciler re-publishes)."""

from __future__ import annotations

from server.engine.attempt_commands import AttemptCommands
from server.engine.child_runs import ChildRunCommands
from server.engine.core import EngineConfig, Publish, Wakeups
from server.engine.diagnosis_commands import DiagnosisCommands
from server.engine.event_commands import EventCommands
from server.engine.schedule_resources import ScheduleResourceCommands

__all__ = ["Engine", "EngineConfig", "Publish", "Wakeups"]


class Engine(
    ChildRunCommands, ScheduleResourceCommands, AttemptCommands, EventCommands, DiagnosisCommands
):
    """Workflow and run commands (child runs included), schedules and their ticks, the worker
    protocol's, the gates', and diagnosis (workers, ExplainRun)."""
