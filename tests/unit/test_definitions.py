from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace

import pytest
from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2
from squidmesh.v1 import workflow_pb2 as pb
from squidmesh.values import to_value

from server.api.definitions import definition_from_proto, definition_to_proto
from server.engine.errors import FieldViolation, InvalidArgument
from server.engine.model import (
    COMPLETE,
    Backoff,
    Condition,
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
from server.engine.schedule import RepeatedTimePolicy, SkippedTimePolicy


def ms(value: int) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromMilliseconds(value)
    return duration


def rich_proto() -> pb.WorkflowDefinition:
    """Every field set, enums explicit: the form definition_to_proto produces."""
    return pb.WorkflowDefinition(
        name="payment",
        version_label="git-abc123",
        description="Charge a card, wait, ask a human.",
        triggers=[
            pb.Trigger(
                name="manual",
                manual=pb.ManualTrigger(),
                payload=[
                    pb.PayloadField(
                        name="amount",
                        type=pb.FIELD_TYPE_INTEGER,
                        required=True,
                        description="cents",
                    ),
                    pb.PayloadField(
                        name="currency",
                        type=pb.FIELD_TYPE_STRING,
                        default_value=to_value("EUR"),
                    ),
                    pb.PayloadField(
                        name="meta",
                        type=pb.FIELD_TYPE_OBJECT,
                        default_value=to_value({"source": "web", "tags": ["a", 1.5]}),
                    ),
                    pb.PayloadField(
                        name="at",
                        type=pb.FIELD_TYPE_TIMESTAMP,
                        default_value=to_value("now"),
                    ),
                ],
            ),
            pb.Trigger(
                name="nightly",
                cron=pb.CronTrigger(
                    expression="0 3 * * *",
                    time_zone="Europe/Paris",
                    missed_tick_policy=pb.MISSED_TICK_POLICY_RUN_ALL,
                    start_time=timestamp_pb2.Timestamp(seconds=1_767_225_600),
                    end_time=timestamp_pb2.Timestamp(seconds=1_798_761_600),
                    jitter=duration_pb2.Duration(seconds=30),
                    skipped_time_policy=pb.SKIPPED_TIME_POLICY_SKIP,
                    repeated_time_policy=pb.REPEATED_TIME_POLICY_LAST,
                    catchup_window=duration_pb2.Duration(seconds=600),
                    max_catchup_runs=3,
                    overlap_policy=pb.OVERLAP_POLICY_ALLOW_ALL,
                ),
            ),
        ],
        steps=[
            pb.Step(
                name="charge",
                task=pb.TaskStep(handler="payment.charge", queue="payments"),
                retry=pb.RetryPolicy(
                    max_attempts=5,
                    backoff=pb.BACKOFF_TYPE_LINEAR,
                    initial_delay=ms(250),
                    max_delay=ms(10_000),
                    multiplier=1.5,
                    jitter=0.1,
                    non_retryable_error_types=["CardDeclined"],
                ),
                attempt_timeout=ms(30_000),
                heartbeat_timeout=ms(5_000),
                input=pb.InputSelection(
                    keys=["amount", "currency"], paths={"src": "meta.source", "tag": "meta.tags.0"}
                ),
                output_key="charge",
                compensate="payment.refund",
            ),
            pb.Step(name="cool_down", wait=pb.WaitStep(duration=ms(1_500))),
            pb.Step(name="note", log=pb.LogStep(message="charged")),
            pb.Step(name="hold", pause=pb.PauseStep()),
            pb.Step(name="approve", approval=pb.ApprovalStep()),
        ],
        transitions=[
            pb.Transition(
                from_step="charge",
                on=pb.OUTCOME_OK,
                to="note",
                condition=pb.Condition(
                    path="charge.amount",
                    operator=pb.CONDITION_OPERATOR_GREATER_THAN,
                    value=to_value(1000),
                ),
            ),
            pb.Transition(from_step="charge", on=pb.OUTCOME_OK, to="cool_down"),
            pb.Transition(from_step="charge", on=pb.OUTCOME_ERROR, to=COMPLETE),
            pb.Transition(from_step="cool_down", on=pb.OUTCOME_OK, to="note"),
            pb.Transition(from_step="note", on=pb.OUTCOME_OK, to="hold"),
            pb.Transition(from_step="hold", on=pb.OUTCOME_OK, to="approve"),
            pb.Transition(from_step="approve", on=pb.OUTCOME_OK, to=COMPLETE),
            pb.Transition(
                from_step="approve",
                on=pb.OUTCOME_ERROR,
                to=COMPLETE,
                condition=pb.Condition(
                    path="approve.actor",
                    operator=pb.CONDITION_OPERATOR_NOT_EQUALS,
                    value=to_value({"name": "bot", "ok": False}),
                ),
            ),
            pb.Transition(from_step="approve", on=pb.OUTCOME_ERROR, to=COMPLETE),
        ],
    )


def test_from_proto_builds_the_domain_definition() -> None:
    defn = definition_from_proto(rich_proto())
    assert defn.name == "payment"
    assert defn.version_label == "git-abc123"
    assert defn.triggers[0] == Trigger(
        name="manual",
        payload=(
            PayloadField("amount", FieldType.INTEGER, required=True, description="cents"),
            PayloadField("currency", FieldType.STRING, default="EUR"),
            PayloadField("meta", FieldType.OBJECT, default={"source": "web", "tags": ["a", 1.5]}),
            PayloadField("at", FieldType.TIMESTAMP, default="now"),
        ),
    )
    assert defn.triggers[1] == Trigger(
        name="nightly",
        cron="0 3 * * *",
        time_zone="Europe/Paris",
        missed_tick_policy=MissedTickPolicy.RUN_ALL,
        start_ms=1_767_225_600_000,
        end_ms=1_798_761_600_000,
        jitter_ms=30_000,
        skipped_time_policy=SkippedTimePolicy.SKIP,
        repeated_time_policy=RepeatedTimePolicy.LAST,
        catchup_window_ms=600_000,
        max_catchup_runs=3,
        overlap_policy=OverlapPolicy.ALLOW_ALL,
    )
    assert defn.steps[0] == Step(
        name="charge",
        kind=StepKind.TASK,
        handler="payment.charge",
        queue="payments",
        retry=RetryPolicy(
            max_attempts=5,
            backoff=Backoff.LINEAR,
            initial_delay_ms=250,
            max_delay_ms=10_000,
            multiplier=1.5,
            jitter=0.1,
            non_retryable_error_types=("CardDeclined",),
        ),
        attempt_timeout_ms=30_000,
        heartbeat_timeout_ms=5_000,
        input=InputSelection(
            keys=("amount", "currency"), paths=(("src", "meta.source"), ("tag", "meta.tags.0"))
        ),
        output_key="charge",
        compensate="payment.refund",
    )
    assert defn.steps[1] == Step("cool_down", StepKind.WAIT, wait_ms=1_500)
    assert defn.steps[2] == Step("note", StepKind.LOG, log_message="charged")
    assert [s.kind for s in defn.steps[3:]] == [StepKind.PAUSE, StepKind.APPROVAL]
    assert defn.transitions[0] == Transition(
        "charge", Outcome.OK, "note", Condition("charge.amount", Operator.GREATER_THAN, 1000)
    )
    assert defn.transitions[2] == Transition("charge", Outcome.ERROR, COMPLETE)


def test_proto_round_trip_is_exact() -> None:
    original = rich_proto()
    assert definition_to_proto(definition_from_proto(original)) == original


def test_domain_round_trip_is_exact() -> None:
    defn = definition_from_proto(rich_proto())
    assert definition_from_proto(definition_to_proto(defn)) == defn
    defaults = WorkflowDef(
        name="minimal",
        triggers=(Trigger("manual"),),
        steps=(Step("only", StepKind.TASK, handler="h", queue="minimal", retry=RetryPolicy()),),
        transitions=(Transition("only", Outcome.OK, COMPLETE),),
    )
    assert definition_from_proto(definition_to_proto(defaults)) == defaults


def test_unset_fields_take_their_defaults() -> None:
    message = pb.WorkflowDefinition(
        name="minimal",
        triggers=[
            pb.Trigger(name="manual"),
            pb.Trigger(name="cron", cron=pb.CronTrigger(expression="* * * * *")),
        ],
        steps=[
            pb.Step(name="a", task=pb.TaskStep(handler="h"), retry=pb.RetryPolicy(max_attempts=2)),
            pb.Step(name="b", task=pb.TaskStep(handler="h"), input=pb.InputSelection()),
        ],
        transitions=[
            pb.Transition(from_step="a", to="b"),
            pb.Transition(from_step="b", to=COMPLETE),
        ],
    )
    defn = definition_from_proto(message)
    assert defn.triggers == (
        Trigger("manual"),
        Trigger(
            "cron", cron="* * * * *", time_zone="UTC", missed_tick_policy=MissedTickPolicy.SKIP
        ),
    )
    a, b = defn.steps
    assert a.queue == "minimal"  # a task without a queue goes to its workflow's
    assert a.retry == RetryPolicy(max_attempts=2)  # exponential, 1 s, multiplier 2
    assert a.input is None
    assert (a.attempt_timeout_ms, a.heartbeat_timeout_ms) == (None, None)
    assert b.retry is None
    assert b.input == InputSelection()
    assert [t.on for t in defn.transitions] == [Outcome.OK, Outcome.OK]


def test_null_and_unset_defaults_both_mean_no_default() -> None:
    null = struct_pb2.Value(null_value=struct_pb2.NULL_VALUE)
    message = rich_proto()
    message.triggers[0].payload[1].default_value.CopyFrom(null)
    message.triggers[0].payload[2].ClearField("default_value")
    payload = definition_from_proto(message).triggers[0].payload
    assert (payload[1].default, payload[2].default) == (None, None)


def violations(message: pb.WorkflowDefinition) -> list[FieldViolation]:
    with pytest.raises(InvalidArgument) as raised:
        definition_from_proto(message)
    count = len(raised.value.violations)
    noun = "problem" if count == 1 else "problems"
    assert raised.value.message == f"invalid workflow definition ({count} {noun})"
    return raised.value.violations


def test_conversion_and_validation_problems_are_reported_together() -> None:
    message = rich_proto()
    message.name = "Bad Name"
    message.steps[0].ClearField("task")  # no kind
    message.steps[0].retry.initial_delay.CopyFrom(ms(-5))
    message.steps[0].attempt_timeout.CopyFrom(ms(-1))
    message.steps[1].wait.ClearField("duration")
    message.triggers[0].payload[0].type = pb.FIELD_TYPE_UNSPECIFIED
    message.triggers[0].payload[1].type = pb.FIELD_TYPE_UNSPECIFIED  # its default is not checked
    message.transitions[0].condition.operator = pb.CONDITION_OPERATOR_UNSPECIFIED
    message.transitions[3].to = "nowhere"
    found = {(v.field, v.description) for v in violations(message)}
    assert found == {
        ("definition.name", "must match [a-z0-9][a-z0-9_.-]{0,127}"),
        ("definition.triggers[0].payload[0].type", "must be set"),
        ("definition.triggers[0].payload[1].type", "must be set"),
        (
            "definition.steps[0].kind",
            "must be one of task, wait, log, pause, approval, wait_event or wait_child",
        ),
        ("definition.steps[0].retry.initial_delay", "must not be negative"),
        ("definition.steps[0].attempt_timeout", "must not be negative"),
        ("definition.steps[1].wait.duration", "is required"),
        ("definition.transitions[0].condition.operator", "must be set"),
        ("definition.transitions[3].to", "unknown step 'nowhere'"),
    }


def test_negative_wait_is_reported_once() -> None:
    message = rich_proto()
    message.steps[1].wait.duration.CopyFrom(ms(-1000))
    assert violations(message) == [
        FieldViolation("definition.steps[1].wait.duration", "must not be negative")
    ]


def test_unknown_enum_numbers_are_reported() -> None:
    message = rich_proto()
    message.transitions[1].on = 7  # type: ignore[assignment]
    message.steps[0].retry.backoff = 9  # type: ignore[assignment]
    assert violations(message) == [
        FieldViolation("definition.steps[0].retry.backoff", "unknown value 9"),
        FieldViolation("definition.transitions[1].on", "unknown value 7"),
    ]


def test_a_single_problem_is_singular() -> None:
    message = rich_proto()
    message.steps[0].task.handler = ""
    assert violations(message) == [
        FieldViolation("definition.steps[0].task.handler", "is required")
    ]


# --- the model's canonical JSON and content hash -----------------------------------------------


def test_json_round_trip_is_exact() -> None:
    defn = definition_from_proto(rich_proto())
    stored = json.loads(json.dumps(defn.to_json()))  # as Postgres JSONB gives it back
    assert WorkflowDef.from_json(stored) == defn


def test_content_hash_is_equal_for_equal_definitions() -> None:
    assert (
        definition_from_proto(rich_proto()).content_hash()
        == definition_from_proto(rich_proto()).content_hash()
    )


@pytest.mark.parametrize(
    "change",
    [
        lambda d: replace(d, description="other"),
        lambda d: replace(d, version_label="v2"),
        lambda d: replace(d, triggers=d.triggers[:1]),
        lambda d: replace(d, steps=(replace(d.steps[0], queue="other"), *d.steps[1:])),
        lambda d: replace(d, steps=(replace(d.steps[0], retry=None), *d.steps[1:])),
        lambda d: replace(d, steps=(*d.steps[:1], replace(d.steps[1], wait_ms=1501), *d.steps[2:])),
        lambda d: replace(d, transitions=d.transitions[::-1]),
        lambda d: replace(
            d, transitions=(replace(d.transitions[0], condition=None), *d.transitions[1:])
        ),
    ],
)
def test_content_hash_changes_when_anything_changes(
    change: Callable[[WorkflowDef], WorkflowDef],
) -> None:
    defn = definition_from_proto(rich_proto())
    changed = change(defn)
    assert changed != defn
    assert changed.content_hash() != defn.content_hash()
