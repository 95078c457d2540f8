"""Workflow definitions: v1 `WorkflowDefinition` ⇄ domain `WorkflowDef`.

`definition_from_proto` converts and validates in one go, so a client sees every problem of its
definition in one INVALID_ARGUMENT; `definition_to_proto` is its exact inverse.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any, TypeVar

from google.protobuf import duration_pb2, timestamp_pb2
from squidmesh.v1 import workflow_pb2
from squidmesh.values import to_value, value_to_python

from server.engine.errors import FieldViolation, InvalidArgument, ResourceExhausted
from server.engine.model import (
    DEFAULT_CATCHUP_WINDOW_MS,
    DEFAULT_MAX_CATCHUP_RUNS,
    Backoff,
    Condition,
    DeadlineAction,
    FieldType,
    InputSelection,
    MissedTickPolicy,
    Operator,
    Outcome,
    OverlapPolicy,
    PayloadField,
    RetryPolicy,
    Step,
    StepKind,
    Transition,
    Trigger,
    WorkflowDef,
)
from server.engine.retry import DEFAULT_RETRY_POLICY, DELAY_CEILING_MS
from server.engine.schedule import RepeatedTimePolicy, SkippedTimePolicy
from server.engine.validation import validate_definition

DEFAULT_TIME_ZONE = "UTC"
DEFAULT_MULTIPLIER = 2.0

_FIELD_TYPES: dict[workflow_pb2.FieldType.ValueType, FieldType] = {
    getattr(workflow_pb2, f"FIELD_TYPE_{t.name}"): t for t in FieldType
}
_OPERATORS: dict[workflow_pb2.ConditionOperator.ValueType, Operator] = {
    getattr(workflow_pb2, f"CONDITION_OPERATOR_{o.name}"): o for o in Operator
}
_OUTCOMES: dict[workflow_pb2.Outcome.ValueType, Outcome] = {
    getattr(workflow_pb2, f"OUTCOME_{o.name}"): o for o in Outcome
}
_BACKOFFS: dict[workflow_pb2.BackoffType.ValueType, Backoff] = {
    getattr(workflow_pb2, f"BACKOFF_TYPE_{b.name}"): b for b in Backoff
}
_DEADLINE_ACTIONS: dict[workflow_pb2.DeadlineAction.ValueType, DeadlineAction] = {
    getattr(workflow_pb2, f"DEADLINE_ACTION_{a.name}"): a for a in DeadlineAction
}
MISSED_TICK_POLICIES: dict[workflow_pb2.MissedTickPolicy.ValueType, MissedTickPolicy] = {
    getattr(workflow_pb2, f"MISSED_TICK_POLICY_{p.name}"): p for p in MissedTickPolicy
}
OVERLAP_POLICIES: dict[workflow_pb2.OverlapPolicy.ValueType, OverlapPolicy] = {
    getattr(workflow_pb2, f"OVERLAP_POLICY_{p.name}"): p for p in OverlapPolicy
}
SKIPPED_TIME_POLICIES: dict[workflow_pb2.SkippedTimePolicy.ValueType, SkippedTimePolicy] = {
    getattr(workflow_pb2, f"SKIPPED_TIME_POLICY_{p.name}"): p for p in SkippedTimePolicy
}
REPEATED_TIME_POLICIES: dict[workflow_pb2.RepeatedTimePolicy.ValueType, RepeatedTimePolicy] = {
    getattr(workflow_pb2, f"REPEATED_TIME_POLICY_{p.name}"): p for p in RepeatedTimePolicy
}

E = TypeVar("E")
K = TypeVar("K", bound=int)


# --- proto → domain ----------------------------------------------------------------------------

MAX_STEPS = 1000
MAX_TRANSITIONS = 5000
MAX_DEFINITION_BYTES = 1 << 20


def check_size(pb: workflow_pb2.WorkflowDefinition) -> None:
    """Refuses a definition past the limits before any work is spent on it."""
    for what, size, limit in (
        ("steps", len(pb.steps), MAX_STEPS),
        ("transitions", len(pb.transitions), MAX_TRANSITIONS),
        ("bytes", pb.ByteSize(), MAX_DEFINITION_BYTES),
    ):
        if size > limit:
            raise ResourceExhausted(
                f"the definition has {size} {what}, more than the limit of {limit}",
                reason="DEFINITION_TOO_LARGE",
                metadata={"what": what, "size": str(size), "limit": str(limit)},
            )


def definition_from_proto(pb: workflow_pb2.WorkflowDefinition) -> WorkflowDef:
    """The domain definition, or InvalidArgument listing every problem of the message."""
    problems: list[FieldViolation] = []
    triggers = tuple(
        _trigger(t, f"definition.triggers[{i}]", problems) for i, t in enumerate(pb.triggers)
    )
    steps = tuple(
        _step(s, f"definition.steps[{i}]", pb.name, problems) for i, s in enumerate(pb.steps)
    )
    transitions = tuple(
        _transition(t, f"definition.transitions[{i}]", problems)
        for i, t in enumerate(pb.transitions)
    )
    defn = WorkflowDef(
        name=pb.name,
        version_label=pb.version_label,
        description=pb.description,
        triggers=triggers,
        steps=steps,
        transitions=transitions,
    )
    # A field that failed conversion holds a placeholder: one problem per field is enough.
    converted = {p.field for p in problems}
    problems += [v for v in validate_definition(defn) if v.field not in converted]
    if problems:
        count = len(problems)
        raise InvalidArgument(
            f"invalid workflow definition ({count} problem{'' if count == 1 else 's'})", problems
        )
    return defn


def _trigger(pb: workflow_pb2.Trigger, where: str, problems: list[FieldViolation]) -> Trigger:
    payload = tuple(
        _payload_field(f, f"{where}.payload[{j}]", problems) for j, f in enumerate(pb.payload)
    )
    if pb.WhichOneof("kind") != "cron":  # an unset kind is a manual trigger too
        return Trigger(name=pb.name, payload=payload)
    cron = pb.cron
    where = f"{where}.cron"
    return Trigger(
        name=pb.name,
        payload=payload,
        cron=cron.expression,
        time_zone=cron.time_zone or DEFAULT_TIME_ZONE,
        missed_tick_policy=enum_value(
            MISSED_TICK_POLICIES,
            cron.missed_tick_policy,
            MissedTickPolicy.SKIP,
            f"{where}.missed_tick_policy",
            problems,
        ),
        start_ms=cron.start_time.ToMilliseconds() if cron.HasField("start_time") else None,
        end_ms=cron.end_time.ToMilliseconds() if cron.HasField("end_time") else None,
        # Jitter stays short of the next tick anyway; the bound is a sanity limit.
        jitter_ms=duration_ms(cron.jitter, f"{where}.jitter", problems)
        if cron.HasField("jitter")
        else 0,
        skipped_time_policy=enum_value(
            SKIPPED_TIME_POLICIES,
            cron.skipped_time_policy,
            SkippedTimePolicy.RUN_AT_GAP_END,
            f"{where}.skipped_time_policy",
            problems,
        ),
        repeated_time_policy=enum_value(
            REPEATED_TIME_POLICIES,
            cron.repeated_time_policy,
            RepeatedTimePolicy.FIRST,
            f"{where}.repeated_time_policy",
            problems,
        ),
        catchup_window_ms=(
            duration_ms(cron.catchup_window, f"{where}.catchup_window", problems)
            if cron.HasField("catchup_window")
            else DEFAULT_CATCHUP_WINDOW_MS
        ),
        max_catchup_runs=cron.max_catchup_runs or DEFAULT_MAX_CATCHUP_RUNS,
        overlap_policy=enum_value(
            OVERLAP_POLICIES,
            cron.overlap_policy,
            OverlapPolicy.SKIP,
            f"{where}.overlap_policy",
            problems,
        ),
    )


def _payload_field(
    pb: workflow_pb2.PayloadField, where: str, problems: list[FieldViolation]
) -> PayloadField:
    field_type = _FIELD_TYPES.get(pb.type)
    if field_type is None:
        _enum_problem(pb.type, f"{where}.type", problems)
    return PayloadField(
        name=pb.name,
        # Without a type the default cannot be checked; the placeholder drops it.
        type=field_type or FieldType.STRING,
        required=pb.required,
        default=value_to_python(pb.default_value) if field_type else None,
        description=pb.description,
    )


def _step(pb: workflow_pb2.Step, where: str, workflow: str, problems: list[FieldViolation]) -> Step:
    kind = pb.WhichOneof("kind")
    if kind is None:
        problems.append(
            FieldViolation(
                f"{where}.kind",
                "must be one of task, wait, log, pause, approval, wait_event or wait_child",
            )
        )
    wait_ms = 0
    if kind == "wait":
        if pb.wait.HasField("duration"):
            wait_ms = duration_ms(pb.wait.duration, f"{where}.wait.duration", problems)
        else:
            problems.append(FieldViolation(f"{where}.wait.duration", "is required"))
    step = Step(
        name=pb.name,
        kind=StepKind(kind) if kind else StepKind.LOG,
        handler=pb.task.handler,
        # Without a queue of its own a task goes to its workflow's, so that the workers of
        # unrelated workflows never receive (and decline) each other's tasks.
        queue=(pb.task.queue or workflow) if kind == "task" else "",
        wait_ms=wait_ms,
        log_message=pb.log.message,
        retry=_retry(pb.retry, f"{where}.retry", problems) if pb.HasField("retry") else None,
        attempt_timeout_ms=(
            duration_ms(pb.attempt_timeout, f"{where}.attempt_timeout", problems, MAX_TIMEOUT_MS)
            if pb.HasField("attempt_timeout")
            else None
        ),
        heartbeat_timeout_ms=(
            duration_ms(
                pb.heartbeat_timeout, f"{where}.heartbeat_timeout", problems, MAX_TIMEOUT_MS
            )
            if pb.HasField("heartbeat_timeout")
            else None
        ),
        input=(
            InputSelection(keys=tuple(pb.input.keys), paths=tuple(sorted(pb.input.paths.items())))
            if pb.HasField("input")
            else None
        ),
        output_key=pb.output_key,
        irreversible=pb.irreversible,
        after=tuple(pb.after),
        compensate=pb.compensate,
        **_gate_options(pb, where, problems),
    )
    if kind is None:
        # LOG stands in for the missing kind, without the options a log step cannot have (so
        # the one problem is not reported once per option); their values were checked above.
        step = replace(
            step,
            retry=None,
            attempt_timeout_ms=None,
            heartbeat_timeout_ms=None,
            input=None,
            output_key="",
            compensate="",
        )
    return step


def _gate_options(
    pb: workflow_pb2.Step, where: str, problems: list[FieldViolation]
) -> dict[str, Any]:
    """The options of an approval, wait_event or wait_child step, as `Step` fields."""
    kind = pb.WhichOneof("kind")
    if kind == "approval":
        approval = pb.approval
        return {
            "deadline_ms": _optional_ms(approval, "deadline", f"{where}.approval", problems),
            "required_approvals": approval.required_approvals or 1,
            "decision_fields": tuple(
                _payload_field(f, f"{where}.approval.fields[{j}]", problems)
                for j, f in enumerate(approval.fields)
            ),
            "on_deadline": enum_value(
                _DEADLINE_ACTIONS,
                approval.on_deadline,
                DeadlineAction.REJECT,
                f"{where}.approval.on_deadline",
                problems,
            ),
            "on_deadline_step": approval.on_deadline_step,
        }
    if kind == "wait_event":
        return {
            "deadline_ms": _optional_ms(pb.wait_event, "deadline", f"{where}.wait_event", problems),
            "event": pb.wait_event.event,
            "correlation_key": pb.wait_event.correlation_key,
        }
    if kind == "wait_child":
        return {
            "deadline_ms": _optional_ms(pb.wait_child, "deadline", f"{where}.wait_child", problems),
            "correlation_key": pb.wait_child.key,
        }
    return {}


def _optional_ms(
    message: workflow_pb2.ApprovalStep | workflow_pb2.WaitEventStep | workflow_pb2.WaitChildStep,
    name: str,
    where: str,
    problems: list[FieldViolation],
) -> int | None:
    if not message.HasField(name):  # type: ignore[arg-type]
        return None
    duration: duration_pb2.Duration = getattr(message, name)
    return duration_ms(duration, f"{where}.{name}", problems)


def _retry(pb: workflow_pb2.RetryPolicy, where: str, problems: list[FieldViolation]) -> RetryPolicy:
    return RetryPolicy(
        max_attempts=pb.max_attempts,
        backoff=enum_value(
            _BACKOFFS, pb.backoff, Backoff.EXPONENTIAL, f"{where}.backoff", problems
        ),
        initial_delay_ms=(
            duration_ms(pb.initial_delay, f"{where}.initial_delay", problems)
            if pb.HasField("initial_delay")
            else DEFAULT_RETRY_POLICY.initial_delay_ms
        ),
        max_delay_ms=(
            duration_ms(pb.max_delay, f"{where}.max_delay", problems)
            if pb.HasField("max_delay")
            else None
        ),
        multiplier=pb.multiplier or DEFAULT_MULTIPLIER,
        jitter=pb.jitter,
        non_retryable_error_types=tuple(pb.non_retryable_error_types),
    )


def _transition(
    pb: workflow_pb2.Transition, where: str, problems: list[FieldViolation]
) -> Transition:
    condition = None
    if pb.HasField("condition"):
        operator = _OPERATORS.get(pb.condition.operator)
        if operator is None:
            _enum_problem(pb.condition.operator, f"{where}.condition.operator", problems)
        condition = Condition(
            path=pb.condition.path,
            # EQUALS is a placeholder for a missing operator: it accepts any value.
            operator=operator or Operator.EQUALS,
            value=value_to_python(pb.condition.value),
        )
    return Transition(
        from_step=pb.from_step,
        on=enum_value(_OUTCOMES, pb.on, Outcome.OK, f"{where}.on", problems),
        to=pb.to,
        condition=condition,
    )


MAX_TIMEOUT_MS = 2**31 - 1
"""The longest attempt or heartbeat timeout (about 24.8 days: they are 32-bit columns)."""


def duration_ms(
    duration: duration_pb2.Duration,
    where: str,
    problems: list[FieldViolation],
    limit_ms: int = DELAY_CEILING_MS,
) -> int:
    """A duration in milliseconds, between 0 and `limit_ms` (a wait or a backoff: a year)."""
    ms = duration.ToMilliseconds()
    if ms < 0:
        problems.append(FieldViolation(where, "must not be negative"))
    elif ms > limit_ms:
        problems.append(
            FieldViolation(
                where, f"must be at most {limit_ms} ms ({limit_ms / 86_400_000:.1f} days)"
            )
        )
    return ms


def enum_value(
    mapping: Mapping[K, E],
    number: K,
    unspecified: E,
    where: str,
    problems: list[FieldViolation],
) -> E:
    """The domain value of an enum that defaults when UNSPECIFIED (0)."""
    if number == 0:
        return unspecified
    if number not in mapping:
        _enum_problem(number, where, problems)
        return unspecified
    return mapping[number]


def _enum_problem(number: int, where: str, problems: list[FieldViolation]) -> None:
    # Proto3 enums are open: a newer client may send a number this server does not know.
    problems.append(
        FieldViolation(where, "must be set" if number == 0 else f"unknown value {number}")
    )


# --- domain → proto ----------------------------------------------------------------------------


def definition_to_proto(defn: WorkflowDef) -> workflow_pb2.WorkflowDefinition:
    return workflow_pb2.WorkflowDefinition(
        name=defn.name,
        version_label=defn.version_label,
        description=defn.description,
        triggers=[_trigger_to_proto(t) for t in defn.triggers],
        steps=[_step_to_proto(s) for s in defn.steps],
        transitions=[_transition_to_proto(t) for t in defn.transitions],
    )


def _trigger_to_proto(trigger: Trigger) -> workflow_pb2.Trigger:
    pb = workflow_pb2.Trigger(
        name=trigger.name,
        payload=[_payload_field_to_proto(f) for f in trigger.payload],
    )
    if trigger.cron is None:
        pb.manual.SetInParent()
    else:
        pb.cron.CopyFrom(
            workflow_pb2.CronTrigger(
                expression=trigger.cron,
                time_zone=trigger.time_zone,
                missed_tick_policy=enum_number(MISSED_TICK_POLICIES, trigger.missed_tick_policy),
                start_time=_timestamp(trigger.start_ms),
                end_time=_timestamp(trigger.end_ms),
                jitter=to_duration(trigger.jitter_ms or None),
                skipped_time_policy=enum_number(SKIPPED_TIME_POLICIES, trigger.skipped_time_policy),
                repeated_time_policy=enum_number(
                    REPEATED_TIME_POLICIES, trigger.repeated_time_policy
                ),
                catchup_window=to_duration(trigger.catchup_window_ms),
                max_catchup_runs=trigger.max_catchup_runs,
                overlap_policy=enum_number(OVERLAP_POLICIES, trigger.overlap_policy),
            )
        )
    return pb


def _payload_field_to_proto(f: PayloadField) -> workflow_pb2.PayloadField:
    return workflow_pb2.PayloadField(
        name=f.name,
        type=enum_number(_FIELD_TYPES, f.type),
        required=f.required,
        default_value=None if f.default is None else to_value(f.default, strict=False),
        description=f.description,
    )


def _step_to_proto(step: Step) -> workflow_pb2.Step:
    pb = workflow_pb2.Step(
        name=step.name,
        retry=None if step.retry is None else _retry_to_proto(step.retry),
        attempt_timeout=to_duration(step.attempt_timeout_ms),
        heartbeat_timeout=to_duration(step.heartbeat_timeout_ms),
        input=(
            None
            if step.input is None
            else workflow_pb2.InputSelection(keys=step.input.keys, paths=dict(step.input.paths))
        ),
        output_key=step.output_key,
        irreversible=step.irreversible,
        after=step.after,
        compensate=step.compensate,
    )
    match step.kind:
        case StepKind.TASK:
            pb.task.CopyFrom(workflow_pb2.TaskStep(handler=step.handler, queue=step.queue))
        case StepKind.WAIT:
            pb.wait.CopyFrom(workflow_pb2.WaitStep(duration=to_duration(step.wait_ms)))
        case StepKind.LOG:
            pb.log.CopyFrom(workflow_pb2.LogStep(message=step.log_message))
        case StepKind.PAUSE:
            pb.pause.SetInParent()
        case StepKind.APPROVAL:
            pb.approval.CopyFrom(
                # Defaults stay unset (0, UNSPECIFIED), as a client that relied on them sent.
                workflow_pb2.ApprovalStep(
                    required_approvals=0
                    if step.required_approvals == 1
                    else step.required_approvals,
                    fields=[_payload_field_to_proto(f) for f in step.decision_fields],
                    deadline=to_duration(step.deadline_ms),
                    on_deadline=(
                        workflow_pb2.DEADLINE_ACTION_UNSPECIFIED
                        if step.on_deadline is DeadlineAction.REJECT
                        else enum_number(_DEADLINE_ACTIONS, step.on_deadline)
                    ),
                    on_deadline_step=step.on_deadline_step,
                )
            )
        case StepKind.WAIT_EVENT:
            pb.wait_event.CopyFrom(
                workflow_pb2.WaitEventStep(
                    event=step.event,
                    correlation_key=step.correlation_key,
                    deadline=to_duration(step.deadline_ms),
                )
            )
        case StepKind.WAIT_CHILD:
            pb.wait_child.CopyFrom(
                workflow_pb2.WaitChildStep(
                    key=step.correlation_key, deadline=to_duration(step.deadline_ms)
                )
            )
    return pb


def _retry_to_proto(policy: RetryPolicy) -> workflow_pb2.RetryPolicy:
    return workflow_pb2.RetryPolicy(
        max_attempts=policy.max_attempts,
        backoff=enum_number(_BACKOFFS, policy.backoff),
        initial_delay=to_duration(policy.initial_delay_ms),
        max_delay=to_duration(policy.max_delay_ms),
        multiplier=policy.multiplier,
        jitter=policy.jitter,
        non_retryable_error_types=policy.non_retryable_error_types,
    )


def _transition_to_proto(t: Transition) -> workflow_pb2.Transition:
    condition = None
    if t.condition is not None:
        condition = workflow_pb2.Condition(
            path=t.condition.path,
            operator=enum_number(_OPERATORS, t.condition.operator),
            value=None if t.condition.value is None else to_value(t.condition.value, strict=False),
        )
    return workflow_pb2.Transition(
        from_step=t.from_step, on=enum_number(_OUTCOMES, t.on), to=t.to, condition=condition
    )


def to_duration(ms: int | None) -> duration_pb2.Duration | None:
    if ms is None:
        return None
    duration = duration_pb2.Duration()
    duration.FromMilliseconds(ms)
    return duration


def _timestamp(ms: int | None) -> timestamp_pb2.Timestamp | None:
    if ms is None:
        return None
    timestamp = timestamp_pb2.Timestamp()
    timestamp.FromMilliseconds(ms)
    return timestamp


def enum_number(mapping: Mapping[K, E], value: E) -> K:
    return next(number for number, v in mapping.items() if v == value)
