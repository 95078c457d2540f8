"""Domain model of workflow definitions and run state.

Plain frozen dataclasses: the engine reasons about these, never about protobuf or SQL rows.
`api/convert.py` maps them to and from the v1 contract; `to_json`/`from_json` give the canonical
form stored in Postgres and hashed for versioning.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from server.engine.schedule.fire_times import RepeatedTimePolicy, SkippedTimePolicy

COMPLETE = "complete"
"""Reserved transition target that ends a run successfully."""


JSON = Any
"""A JSON-compatible value (dict, list, str, int, float, bool, None)."""


class FieldType(enum.StrEnum):
    STRING = "string"
    INTEGER = "integer"
    NUMBER = "number"
    BOOLEAN = "boolean"
    OBJECT = "object"
    LIST = "list"
    TIMESTAMP = "timestamp"


class StepKind(enum.StrEnum):
    TASK = "task"
    WAIT = "wait"
    LOG = "log"
    PAUSE = "pause"
    APPROVAL = "approval"
    WAIT_EVENT = "wait_event"
    WAIT_CHILD = "wait_child"

    @property
    def gate(self) -> bool:
        """Whether the step waits for something outside the run (a person, an event, a child
        run): it holds no worker slot and has a row in `waits` while it waits."""
        return self in GATE_STEP_KINDS


GATE_STEP_KINDS = frozenset(
    {StepKind.PAUSE, StepKind.APPROVAL, StepKind.WAIT_EVENT, StepKind.WAIT_CHILD}
)


class DeadlineAction(enum.StrEnum):
    REJECT = "reject"
    FAIL = "fail"
    ROUTE = "route"


class Outcome(enum.StrEnum):
    OK = "ok"
    ERROR = "error"


class Operator(enum.StrEnum):
    EQUALS = "equals"
    NOT_EQUALS = "not_equals"
    GREATER_THAN = "greater_than"
    LESS_THAN = "less_than"


class Backoff(enum.StrEnum):
    FIXED = "fixed"
    LINEAR = "linear"
    EXPONENTIAL = "exponential"


class MissedTickPolicy(enum.StrEnum):
    """What a schedule does with ticks missed while no server ran (within the catch-up
    window)."""

    SKIP = "skip"
    RUN_LATEST = "run_latest"
    RUN_ALL = "run_all"


class OverlapPolicy(enum.StrEnum):
    """What a tick does while a run its schedule started earlier is still active."""

    SKIP = "skip"
    BUFFER_ONE = "buffer_one"
    ALLOW_ALL = "allow_all"
    CANCEL_OTHER = "cancel_other"


class ScheduleRunOrigin(enum.StrEnum):
    """How a schedule started a run."""

    TICK = "tick"
    MANUAL = "manual"
    BACKFILL = "backfill"


@dataclass(frozen=True)
class ScheduleOrigin:
    """Where a run a schedule started came from (kept by a replay of it)."""

    schedule_id: str
    nominal_at: datetime
    """The tick's nominal instant (UTC): with the schedule id, the tick's identity."""
    fired_at: datetime
    """When it was started."""
    origin: ScheduleRunOrigin


DEFAULT_CATCHUP_WINDOW_MS = 3_600_000
DEFAULT_MAX_CATCHUP_RUNS = 10


class RunStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    WAITING = "waiting"
    RETRYING = "retrying"
    PAUSED = "paused"
    CANCELLING = "cancelling"
    COMPENSATING = "compensating"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_RUN_STATUSES


TERMINAL_RUN_STATUSES = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED})
ACTIVE_RUN_STATUSES = frozenset(
    {
        RunStatus.PENDING,
        RunStatus.RUNNING,
        RunStatus.WAITING,
        RunStatus.RETRYING,
        RunStatus.COMPENSATING,
    }
)
"""Statuses in which attempts may be claimed and results applied (while compensating, only
the compensations' results move the run on)."""


class StepStatus(enum.StrEnum):
    SCHEDULED = "scheduled"
    RUNNING = "running"
    RETRYING = "retrying"
    WAITING = "waiting"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


LIVE_STEP_STATUSES = frozenset(
    {
        StepStatus.SCHEDULED,
        StepStatus.RUNNING,
        StepStatus.RETRYING,
        StepStatus.WAITING,
        StepStatus.PAUSED,
    }
)
"""A step in one of these is the run's current step."""


class AttemptKind(enum.StrEnum):
    TASK = "task"
    """Published to the step's queue and run by a worker."""
    WAIT = "wait"
    """A durable timer the server completes itself when it is due."""


class AttemptStatus(enum.StrEnum):
    SCHEDULED = "scheduled"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


# --- definitions -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PayloadField:
    name: str
    type: FieldType
    required: bool = False
    default: JSON = None
    """None means no default. Timestamps accept the literals "now" and "today"."""
    description: str = ""


@dataclass(frozen=True)
class Trigger:
    name: str
    payload: tuple[PayloadField, ...] = ()
    cron: str | None = None
    """Cron expression; None for a manual trigger. The fields below are its schedule's."""
    time_zone: str = "UTC"
    missed_tick_policy: MissedTickPolicy = MissedTickPolicy.SKIP
    start_ms: int | None = None
    """No tick before this instant (epoch milliseconds, inclusive)."""
    end_ms: int | None = None
    """No tick after this instant (epoch milliseconds, inclusive)."""
    jitter_ms: int = 0
    skipped_time_policy: SkippedTimePolicy = SkippedTimePolicy.RUN_AT_GAP_END
    repeated_time_policy: RepeatedTimePolicy = RepeatedTimePolicy.FIRST
    catchup_window_ms: int = DEFAULT_CATCHUP_WINDOW_MS
    max_catchup_runs: int = DEFAULT_MAX_CATCHUP_RUNS
    overlap_policy: OverlapPolicy = OverlapPolicy.SKIP


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 3
    backoff: Backoff = Backoff.EXPONENTIAL
    initial_delay_ms: int = 1000
    max_delay_ms: int | None = None
    multiplier: float = 2.0
    jitter: float = 0.0
    non_retryable_error_types: tuple[str, ...] = ()


@dataclass(frozen=True)
class InputSelection:
    keys: tuple[str, ...] = ()
    paths: tuple[tuple[str, str], ...] = ()
    """(input name, dotted context path) pairs, sorted by name."""


@dataclass(frozen=True)
class Step:
    name: str
    kind: StepKind
    handler: str = ""
    queue: str = ""
    """A task's queue (the registration fills in the workflow's name when none is given)."""
    wait_ms: int = 0
    log_message: str = ""
    retry: RetryPolicy | None = None
    """None means the server default."""
    attempt_timeout_ms: int | None = None
    heartbeat_timeout_ms: int | None = None
    """None means the server default lease."""
    input: InputSelection | None = None
    """None means the whole context."""
    output_key: str = ""
    irreversible: bool = False
    after: tuple[str, ...] = ()
    compensate: str = ""
    # Gates (pause, approval, wait_event, wait_child). Absent from the content hash at their
    # defaults, so definitions registered before gates existed keep their hash.
    deadline_ms: int | None = None
    """Approval, wait_event, wait_child: how long after the step is reached it may wait."""
    required_approvals: int = 1
    decision_fields: tuple[PayloadField, ...] = ()
    """The fields an approval's decision payload may carry."""
    on_deadline: DeadlineAction = DeadlineAction.REJECT
    on_deadline_step: str = ""
    event: str = ""
    """wait_event: the event name."""
    correlation_key: str = ""
    """wait_event: the correlation key template; wait_child: the child's key template."""


_SCHEDULE_DEFAULTS: dict[str, Any] = {
    "start_ms": None,
    "end_ms": None,
    "jitter_ms": 0,
    "skipped_time_policy": SkippedTimePolicy.RUN_AT_GAP_END,
    "repeated_time_policy": RepeatedTimePolicy.FIRST,
    "catchup_window_ms": DEFAULT_CATCHUP_WINDOW_MS,
    "max_catchup_runs": DEFAULT_MAX_CATCHUP_RUNS,
    "overlap_policy": OverlapPolicy.SKIP,
}
"""A trigger's schedule options, left out of the content hash at these values (as gate options
are): definitions hash as they did before the options existed."""

_GATE_DEFAULTS: dict[str, Any] = {
    "deadline_ms": None,
    "required_approvals": 1,
    "decision_fields": [],
    "on_deadline": DeadlineAction.REJECT,
    "on_deadline_step": "",
    "event": "",
    "correlation_key": "",
}


COMPENSATION_SUFFIX = ":compensate"
"""A compensation runs as a step of its own named "<step>:compensate" (":" is not allowed in
step names, so the name never collides)."""


def compensation_step(step: str) -> str:
    return step + COMPENSATION_SUFFIX


def compensated_step(name: str) -> str | None:
    """The step a compensation step undoes; None for an ordinary step."""
    return name.removesuffix(COMPENSATION_SUFFIX) if name.endswith(COMPENSATION_SUFFIX) else None


@dataclass(frozen=True)
class Condition:
    path: str
    operator: Operator
    value: JSON


@dataclass(frozen=True)
class Transition:
    from_step: str
    on: Outcome
    to: str
    condition: Condition | None = None


@dataclass(frozen=True)
class WorkflowDef:
    name: str
    triggers: tuple[Trigger, ...]
    steps: tuple[Step, ...]
    transitions: tuple[Transition, ...] = ()
    version_label: str = ""
    description: str = ""

    def step(self, name: str) -> Step:
        """The named step; for "<step>:compensate", the task that runs its compensation
        (the step's compensate handler, on its queue, with its retry policy and timeouts)."""
        undone = compensated_step(name)
        if undone is not None:
            original = self.step(undone)
            return Step(
                name=name,
                kind=StepKind.TASK,
                handler=original.compensate,
                queue=original.queue,
                retry=original.retry,
                attempt_timeout_ms=original.attempt_timeout_ms,
                heartbeat_timeout_ms=original.heartbeat_timeout_ms,
            )
        return self._steps_by_name[name]

    @functools.cached_property
    def _steps_by_name(self) -> dict[str, Step]:
        """The steps by name (the first of a repeated name): every decision looks steps up."""
        by_name: dict[str, Step] = {}
        for s in self.steps:
            by_name.setdefault(s.name, s)
        return by_name

    @property
    def compensates(self) -> bool:
        """Whether any step declares a compensation."""
        return any(s.compensate for s in self.steps)

    def trigger(self, name: str) -> Trigger | None:
        """The named trigger, or the default (first) one for an empty name."""
        if not name:
            return self.triggers[0] if self.triggers else None
        return next((t for t in self.triggers if t.name == name), None)

    @property
    def uses_dependencies(self) -> bool:
        return any(s.after for s in self.steps)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(data: dict[str, Any]) -> WorkflowDef:
        return WorkflowDef(
            name=data["name"],
            version_label=data.get("version_label", ""),
            description=data.get("description", ""),
            triggers=tuple(
                Trigger(
                    name=t["name"],
                    payload=tuple(_field_from_json(f) for f in t["payload"]),
                    cron=t["cron"],
                    time_zone=t["time_zone"],
                    missed_tick_policy=MissedTickPolicy(t["missed_tick_policy"]),
                    start_ms=t.get("start_ms"),
                    end_ms=t.get("end_ms"),
                    jitter_ms=t.get("jitter_ms", 0),
                    skipped_time_policy=SkippedTimePolicy(
                        t.get("skipped_time_policy", SkippedTimePolicy.RUN_AT_GAP_END)
                    ),
                    repeated_time_policy=RepeatedTimePolicy(
                        t.get("repeated_time_policy", RepeatedTimePolicy.FIRST)
                    ),
                    catchup_window_ms=t.get("catchup_window_ms", DEFAULT_CATCHUP_WINDOW_MS),
                    max_catchup_runs=t.get("max_catchup_runs", DEFAULT_MAX_CATCHUP_RUNS),
                    overlap_policy=OverlapPolicy(t.get("overlap_policy", OverlapPolicy.SKIP)),
                )
                for t in data["triggers"]
            ),
            steps=tuple(_step_from_json(s) for s in data["steps"]),
            transitions=tuple(
                Transition(
                    from_step=t["from_step"],
                    on=Outcome(t["on"]),
                    to=t["to"],
                    condition=(
                        Condition(
                            path=t["condition"]["path"],
                            operator=Operator(t["condition"]["operator"]),
                            value=t["condition"]["value"],
                        )
                        if t["condition"]
                        else None
                    ),
                )
                for t in data["transitions"]
            ),
        )

    def content_hash(self) -> str:
        """Hash of the canonical content: equal definitions hash equal. Gate options at their
        defaults are left out, so a definition hashes as it did before they existed."""
        content = self.to_json()
        for step in content["steps"]:
            for key, default in _GATE_DEFAULTS.items():
                if step[key] == default:
                    del step[key]
        for trigger in content["triggers"]:
            for key, default in _SCHEDULE_DEFAULTS.items():
                if trigger[key] == default:
                    del trigger[key]
        canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def _field_from_json(f: dict[str, Any]) -> PayloadField:
    return PayloadField(
        name=f["name"],
        type=FieldType(f["type"]),
        required=f["required"],
        default=f["default"],
        description=f.get("description", ""),
    )


def _step_from_json(s: dict[str, Any]) -> Step:
    retry = s["retry"]
    selection = s["input"]
    return Step(
        name=s["name"],
        kind=StepKind(s["kind"]),
        handler=s["handler"],
        queue=s["queue"],
        wait_ms=s["wait_ms"],
        log_message=s["log_message"],
        retry=(
            RetryPolicy(
                max_attempts=retry["max_attempts"],
                backoff=Backoff(retry["backoff"]),
                initial_delay_ms=retry["initial_delay_ms"],
                max_delay_ms=retry["max_delay_ms"],
                multiplier=retry["multiplier"],
                jitter=retry["jitter"],
                non_retryable_error_types=tuple(retry["non_retryable_error_types"]),
            )
            if retry
            else None
        ),
        attempt_timeout_ms=s["attempt_timeout_ms"],
        heartbeat_timeout_ms=s["heartbeat_timeout_ms"],
        input=(
            InputSelection(
                keys=tuple(selection["keys"]),
                paths=tuple((k, v) for k, v in selection["paths"]),
            )
            if selection
            else None
        ),
        output_key=s["output_key"],
        irreversible=s["irreversible"],
        after=tuple(s["after"]),
        compensate=s["compensate"],
        # Definitions stored before gates existed lack these.
        deadline_ms=s.get("deadline_ms"),
        required_approvals=s.get("required_approvals", 1),
        decision_fields=tuple(_field_from_json(f) for f in s.get("decision_fields", ())),
        on_deadline=DeadlineAction(s.get("on_deadline", DeadlineAction.REJECT)),
        on_deadline_step=s.get("on_deadline_step", ""),
        event=s.get("event", ""),
        correlation_key=s.get("correlation_key", ""),
    )


@dataclass(frozen=True)
class Failure:
    """Why an attempt, a step or a run failed."""

    reason: str
    message: str
    type: str = ""
    details: dict[str, JSON] = field(default_factory=dict)
    step: str = ""
    attempt_number: int = 0
    non_retryable: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(data: dict[str, Any] | None) -> Failure | None:
        return Failure(**data) if data else None


class FailureReason(enum.StrEnum):
    HANDLER_ERROR = "handler_error"
    WORKER_LOST = "worker_lost"
    TIMED_OUT = "timed_out"
    NO_MATCHING_TRANSITION = "no_matching_transition"
    CANCELLED = "cancelled"
    INPUT_MISSING = "input_missing"
    APPROVAL_REJECTED = "approval_rejected"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    CHILD_RUN_FAILED = "child_run_failed"
