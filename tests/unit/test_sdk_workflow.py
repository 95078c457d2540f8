"""The DSL produces the contract's WorkflowDefinition, every option in its field."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from google.protobuf import duration_pb2, struct_pb2
from squidmesh.v1 import workflow_pb2
from squidmesh.values import from_duration

from worker_sdk import Field, Retry, StepContext, Workflow, value_to_python, when


def build() -> Workflow:
    payment = Workflow("payment", description="Charge a card", version_label="abc123")
    payment.trigger(
        "manual",
        payload=[
            Field("amount", "number", required=True, description="in cents"),
            Field("currency", "string", default="EUR"),
            Field("at", "timestamp", default="now"),
        ],
    )
    payment.trigger(
        "nightly",
        cron="0 3 * * *",
        time_zone="Europe/Paris",
        missed_ticks="run_latest",
        payload=[Field("amount", "integer", default=0)],
    )

    @payment.task(
        queue="payments",
        output_key="validation",
        retry=Retry(
            max_attempts=3,
            backoff="exponential",
            initial_delay=0.1,
            max_delay=5,
            multiplier=2,
            jitter=0.1,
            non_retryable=["ValueError", KeyError],
        ),
        input=["amount", "currency"],
        attempt_timeout=30,
        heartbeat_timeout=10,
        irreversible=True,
    )
    async def validate(input: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
        return {"amount": input["amount"]}

    @payment.task(input={"amt": "order.amount"}, name="charge_card", compensate="payment.undo")
    def charge(input: dict[str, Any]) -> dict[str, Any]:
        return {"charged": input["amt"]}

    payment.wait("cool_down", seconds=0.3)
    payment.log("note", "charged")
    payment.transition("validate", "charge_card", when=when("validation.amount").greater_than(1000))
    payment.transition("validate", "cool_down", when=when("validation.currency").equals("EUR"))
    payment.transition("validate", "note")
    payment.transition("charge_card", "complete")
    payment.transition("charge_card", "note", on="error")
    return payment


def test_workflow_header_and_triggers() -> None:
    d = build().definition()
    assert (d.name, d.description, d.version_label) == ("payment", "Charge a card", "abc123")
    manual, nightly = d.triggers
    assert manual.name == "manual" and manual.WhichOneof("kind") == "manual"
    amount, currency, at = manual.payload
    assert (amount.name, amount.type, amount.required) == (
        "amount",
        workflow_pb2.FIELD_TYPE_NUMBER,
        True,
    )
    assert amount.description == "in cents" and not amount.HasField("default_value")
    assert currency.default_value.string_value == "EUR" and not currency.required
    assert at.type == workflow_pb2.FIELD_TYPE_TIMESTAMP and at.default_value.string_value == "now"
    assert nightly.WhichOneof("kind") == "cron"
    assert nightly.cron.expression == "0 3 * * *"
    assert nightly.cron.time_zone == "Europe/Paris"
    assert nightly.cron.missed_tick_policy == workflow_pb2.MISSED_TICK_POLICY_RUN_LATEST
    assert nightly.payload[0].type == workflow_pb2.FIELD_TYPE_INTEGER
    assert nightly.payload[0].default_value.number_value == 0
    assert nightly.payload[0].HasField("default_value")


def test_cron_trigger_options_fill_the_cron_trigger_exactly() -> None:
    wf = Workflow("report")
    start = datetime(2026, 1, 1, tzinfo=UTC)
    end = datetime(2026, 12, 31, 23, 0, tzinfo=timezone(timedelta(hours=1)))
    wf.trigger(
        "hourly",
        cron="0 * * * *",
        time_zone="America/New_York",
        start_time=start,
        end_time=end,
        jitter=timedelta(minutes=5),
        skipped_time="skip",
        repeated_time="last",
        catchup_window=7200,
        missed_ticks="run_all",
        max_catchup_runs=3,
        overlap="buffer_one",
    )
    (trigger,) = wf.definition().triggers
    expected = workflow_pb2.CronTrigger(
        expression="0 * * * *",
        time_zone="America/New_York",
        missed_tick_policy=workflow_pb2.MISSED_TICK_POLICY_RUN_ALL,
        jitter=duration_pb2.Duration(seconds=300),
        skipped_time_policy=workflow_pb2.SKIPPED_TIME_POLICY_SKIP,
        repeated_time_policy=workflow_pb2.REPEATED_TIME_POLICY_LAST,
        catchup_window=duration_pb2.Duration(seconds=7200),
        max_catchup_runs=3,
        overlap_policy=workflow_pb2.OVERLAP_POLICY_BUFFER_ONE,
    )
    expected.start_time.FromDatetime(start)
    expected.end_time.FromDatetime(end.astimezone(UTC))
    assert trigger.cron == expected
    assert trigger.cron.end_time.ToDatetime(UTC) == datetime(2026, 12, 31, 22, 0, tzinfo=UTC)


def test_a_cron_trigger_without_options_leaves_them_to_the_server() -> None:
    """Unset options keep their proto defaults (UNSPECIFIED, unset durations and times), so a
    definition hashes as it did before the options existed."""
    wf = Workflow("report")
    wf.trigger("daily", cron="@daily")
    (trigger,) = wf.definition().triggers
    assert trigger.cron == workflow_pb2.CronTrigger(expression="@daily")
    for policy, value in (
        ("skip", workflow_pb2.OVERLAP_POLICY_SKIP),
        ("allow_all", workflow_pb2.OVERLAP_POLICY_ALLOW_ALL),
        ("cancel_other", workflow_pb2.OVERLAP_POLICY_CANCEL_OTHER),
    ):
        other = Workflow("report")
        options: dict[str, Any] = {"overlap": policy, "skipped_time": "run_at_gap_end"}
        other.trigger("daily", cron="@daily", **options)
        (cron,) = (t.cron for t in other.definition().triggers)
        assert cron.overlap_policy == value
        assert cron.skipped_time_policy == workflow_pb2.SKIPPED_TIME_POLICY_RUN_AT_GAP_END


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"cron": " "}, ValueError, "trigger 't': empty cron expression"),
        ({"time_zone": "UTC"}, ValueError, "trigger 't': time_zone without a cron expression"),
        (
            {"jitter": 5, "overlap": "allow_all"},
            ValueError,
            "trigger 't': jitter, overlap without a cron expression",
        ),
        (
            {"cron": "@daily", "missed_ticks": "run_once"},
            ValueError,
            r"trigger 't': missed_ticks 'run_once' is not one of: skip, run_latest, run_all$",
        ),
        (
            {"cron": "@daily", "overlap": "queue"},
            ValueError,
            "overlap 'queue' is not one of: skip, buffer_one, allow_all, cancel_other",
        ),
        (
            {"cron": "@daily", "skipped_time": "later"},
            ValueError,
            "skipped_time 'later' is not one of: run_at_gap_end, skip",
        ),
        (
            {"cron": "@daily", "repeated_time": "both"},
            ValueError,
            "repeated_time 'both' is not one of: first, last",
        ),
        (
            {"cron": "@daily", "max_catchup_runs": 5},
            ValueError,
            "trigger 't': max_catchup_runs goes with missed_ticks='run_all'",
        ),
        (
            {"cron": "@daily", "missed_ticks": "run_all", "max_catchup_runs": -1},
            ValueError,
            "max_catchup_runs must be 0 or more, got -1",
        ),
        (
            {"cron": "@daily", "missed_ticks": "run_all", "max_catchup_runs": 2.5},
            TypeError,
            "max_catchup_runs must be a whole number, not 2.5",
        ),
        ({"cron": "@daily", "jitter": -1}, ValueError, "trigger 't': jitter: a duration must be"),
        (
            {"cron": "@daily", "catchup_window": "1h"},
            TypeError,
            "trigger 't': catchup_window: a duration is a number of seconds, not str",
        ),
        (
            {"cron": "@daily", "start_time": datetime(2026, 1, 1)},
            ValueError,
            "trigger 't': start_time must be timezone-aware",
        ),
        (
            {"cron": "@daily", "end_time": "2026-01-01"},
            TypeError,
            "trigger 't': end_time must be a datetime, not str",
        ),
        (
            {
                "cron": "@daily",
                "start_time": datetime(2026, 2, 1, tzinfo=UTC),
                "end_time": datetime(2026, 1, 1, tzinfo=UTC),
            },
            ValueError,
            "trigger 't': end_time is before start_time",
        ),
    ],
)
def test_cron_trigger_options_are_checked(
    options: dict[str, Any], error: type[Exception], message: str
) -> None:
    wf = Workflow("w")
    with pytest.raises(error, match=message):
        wf.trigger("t", **options)
    assert wf.definition().triggers == []  # nothing half-added


def test_task_step_options() -> None:
    d = build().definition()
    assert [s.name for s in d.steps] == ["validate", "charge_card", "cool_down", "note"]
    validate = d.steps[0]
    assert validate.WhichOneof("kind") == "task"
    assert validate.task.handler == "payment.validate"
    assert validate.task.queue == "payments"
    assert validate.output_key == "validation"
    assert validate.irreversible
    assert list(validate.input.keys) == ["amount", "currency"] and not validate.input.paths
    assert from_duration(validate.attempt_timeout) == 30
    assert from_duration(validate.heartbeat_timeout) == 10
    retry = validate.retry
    assert retry.max_attempts == 3
    assert retry.backoff == workflow_pb2.BACKOFF_TYPE_EXPONENTIAL
    assert (retry.initial_delay.seconds, retry.initial_delay.nanos) == (0, 100_000_000)
    assert (retry.max_delay.seconds, retry.max_delay.nanos) == (5, 0)
    assert retry.multiplier == 2 and retry.jitter == pytest.approx(0.1)
    assert list(retry.non_retryable_error_types) == ["ValueError", "KeyError"]

    charge = d.steps[1]
    assert charge.task.handler == "payment.charge_card" and charge.task.queue == "payment"
    assert dict(charge.input.paths) == {"amt": "order.amount"} and not charge.input.keys
    assert charge.compensate == "payment.undo"
    assert not charge.HasField("retry") and not charge.HasField("attempt_timeout")
    assert not charge.HasField("heartbeat_timeout") and charge.output_key == ""
    assert not charge.irreversible


def test_no_input_selection_means_whole_context() -> None:
    wf = Workflow("w")

    @wf.task
    def only(input: dict[str, Any]) -> None:
        return None

    step = wf.definition().steps[0]
    assert not step.HasField("input") and step.task.handler == "w.only"


def test_built_in_steps() -> None:
    d = build().definition()
    cool_down, note = d.steps[2], d.steps[3]
    assert cool_down.WhichOneof("kind") == "wait"
    assert (cool_down.wait.duration.seconds, cool_down.wait.duration.nanos) == (0, 300_000_000)
    assert note.WhichOneof("kind") == "log" and note.log.message == "charged"
    wf = Workflow("w")
    wf.pause("hold")
    wf.approval("sign_off", after=["hold"])
    hold, sign_off = wf.definition().steps
    assert hold.WhichOneof("kind") == "pause"
    assert sign_off.WhichOneof("kind") == "approval" and list(sign_off.after) == ["hold"]


def test_gates_produce_their_steps_exactly() -> None:
    wf = Workflow("loan")
    wf.approval(
        "credit_committee",
        required_approvals=2,
        fields=[Field("limit", "number", required=True), Field("note", "string", default="")],
        deadline=timedelta(hours=48),
        on_deadline="route",
        on_deadline_step="escalate",
        output_key="committee",
    )
    wf.approval("sign_off", deadline=90.5, on_deadline="fail", after=["credit_committee"])
    wf.wait_event(
        "settled", "payment.settled", "order:{order_id}", deadline=600, output_key="payment"
    )
    wf.wait_child("shipment", "ship:{order_id}", deadline=timedelta(minutes=5), after=["settled"])
    wf.wait_event("forever", "ping", "k")
    committee, sign_off, settled, shipment, forever = wf.definition().steps

    assert committee == workflow_pb2.Step(
        name="credit_committee",
        output_key="committee",
        approval=workflow_pb2.ApprovalStep(
            required_approvals=2,
            fields=[
                workflow_pb2.PayloadField(
                    name="limit", type=workflow_pb2.FIELD_TYPE_NUMBER, required=True
                ),
                workflow_pb2.PayloadField(
                    name="note",
                    type=workflow_pb2.FIELD_TYPE_STRING,
                    default_value=struct_pb2.Value(string_value=""),
                ),
            ],
            deadline=duration_pb2.Duration(seconds=48 * 3600),
            on_deadline=workflow_pb2.DEADLINE_ACTION_ROUTE,
            on_deadline_step="escalate",
        ),
    )
    assert sign_off == workflow_pb2.Step(
        name="sign_off",
        after=["credit_committee"],
        approval=workflow_pb2.ApprovalStep(
            required_approvals=1,
            deadline=duration_pb2.Duration(seconds=90, nanos=500_000_000),
            on_deadline=workflow_pb2.DEADLINE_ACTION_FAIL,
        ),
    )
    assert settled == workflow_pb2.Step(
        name="settled",
        output_key="payment",
        wait_event=workflow_pb2.WaitEventStep(
            event="payment.settled",
            correlation_key="order:{order_id}",
            deadline=duration_pb2.Duration(seconds=600),
        ),
    )
    assert shipment == workflow_pb2.Step(
        name="shipment",
        after=["settled"],
        wait_child=workflow_pb2.WaitChildStep(
            key="ship:{order_id}", deadline=duration_pb2.Duration(seconds=300)
        ),
    )
    # No deadline: the field is unset (wait forever), not a zero duration.
    assert not forever.wait_event.HasField("deadline")


def test_an_approval_without_options_waits_for_one_approval_and_no_deadline() -> None:
    wf = Workflow("w")
    wf.approval("ok")
    (step,) = wf.definition().steps
    assert step.approval == workflow_pb2.ApprovalStep(required_approvals=1)
    assert not step.approval.HasField("deadline")
    assert step.approval.on_deadline == workflow_pb2.DEADLINE_ACTION_UNSPECIFIED  # reject


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"required_approvals": 0}, ValueError, "required_approvals must be at least 1"),
        ({"required_approvals": 1.5}, TypeError, "required_approvals must be a whole number"),
        ({"required_approvals": True}, TypeError, "required_approvals must be a whole number"),
        ({"on_deadline": "fail"}, ValueError, "on_deadline/on_deadline_step need a deadline"),
        ({"on_deadline_step": "x"}, ValueError, "on_deadline/on_deadline_step need a deadline"),
        ({"deadline": 5, "on_deadline": "ignore"}, ValueError, "unknown on_deadline 'ignore'"),
        ({"deadline": 5, "on_deadline": "route"}, ValueError, "'route' goes with on_deadline_step"),
        (
            {"deadline": 5, "on_deadline": "reject", "on_deadline_step": "x"},
            ValueError,
            "'route' goes with on_deadline_step",
        ),
        ({"deadline": -1}, ValueError, "a duration must be a finite number of seconds >= 0"),
        ({"deadline": "1h"}, TypeError, "a duration is a number of seconds, not str"),
        (
            {"fields": [Field("a", "string"), Field("a", "number")]},
            ValueError,
            r"step 'gate': duplicate fields \['a'\]",
        ),
    ],
)
def test_approval_options_are_checked(
    options: dict[str, Any], error: type[Exception], message: str
) -> None:
    wf = Workflow("w")
    with pytest.raises(error, match=message):
        wf.approval("gate", **options)
    assert wf.step_names == []  # nothing half-added


def test_waits_need_what_they_wait_for() -> None:
    wf = Workflow("w")
    with pytest.raises(ValueError, match="needs an event and a correlation key"):
        wf.wait_event("e", "", "k")
    with pytest.raises(ValueError, match="needs an event and a correlation key"):
        wf.wait_event("e", "paid", "")
    with pytest.raises(ValueError, match="needs the child's key"):
        wf.wait_child("c", "")
    with pytest.raises(ValueError, match="a duration must be"):
        wf.wait_child("c", "k", deadline=timedelta(seconds=-1))
    with pytest.raises(ValueError, match="duplicate step"):
        wf.wait_child("e2", "k")
        wf.wait_event("e2", "paid", "k")
    assert wf.step_names == ["e2"]


def test_transitions_and_conditions() -> None:
    t = build().definition().transitions
    assert [(x.from_step, x.to) for x in t] == [
        ("validate", "charge_card"),
        ("validate", "cool_down"),
        ("validate", "note"),
        ("charge_card", "complete"),
        ("charge_card", "note"),
    ]
    assert [x.on for x in t] == [workflow_pb2.OUTCOME_OK] * 4 + [workflow_pb2.OUTCOME_ERROR]
    greater = t[0].condition
    assert greater.path == "validation.amount"
    assert greater.operator == workflow_pb2.CONDITION_OPERATOR_GREATER_THAN
    assert greater.value.WhichOneof("kind") == "number_value" and greater.value.number_value == 1000
    equals = t[1].condition
    assert equals.operator == workflow_pb2.CONDITION_OPERATOR_EQUALS
    assert equals.value.WhichOneof("kind") == "string_value" and equals.value.string_value == "EUR"
    assert not t[2].HasField("condition")


@pytest.mark.parametrize(
    ("condition", "operator", "value"),
    [
        (when("a.b").equals(True), workflow_pb2.CONDITION_OPERATOR_EQUALS, True),
        (when("a").not_equals(None), workflow_pb2.CONDITION_OPERATOR_NOT_EQUALS, None),
        (when("a").less_than(2.5), workflow_pb2.CONDITION_OPERATOR_LESS_THAN, 2.5),
        (
            when("a").equals({"k": [1, "x"]}),
            workflow_pb2.CONDITION_OPERATOR_EQUALS,
            {"k": [1, "x"]},
        ),
    ],
)
def test_condition_values_are_typed(condition: Any, operator: int, value: Any) -> None:
    proto = condition.to_proto()
    assert proto.operator == operator
    assert value_to_python(proto.value) == value
    if value is None:
        assert proto.value.WhichOneof("kind") == "null_value"
    if value is True:
        assert proto.value.WhichOneof("kind") == "bool_value"


def test_comparisons_need_numbers() -> None:
    with pytest.raises(TypeError):
        when("a").greater_than("10")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        when("a").less_than(True)
    with pytest.raises(ValueError):
        when("a..b")


def test_decorated_function_stays_a_plain_function_and_is_registered() -> None:
    wf = Workflow("w")

    @wf.task(queue="q1")
    def double(input: dict[str, int]) -> int:
        return input["n"] * 2

    @wf.task(queue="q2")
    async def later(input: Any, ctx: StepContext) -> None:
        return None

    assert double({"n": 4}) == 8
    handlers = wf.handlers
    assert handlers["w.double"].fn is double and not handlers["w.double"].takes_context
    assert not handlers["w.double"].is_async
    assert handlers["w.later"].is_async and handlers["w.later"].takes_context
    assert wf.queues == ["q1", "q2"]


def test_compensation_function_is_registered_as_a_handler() -> None:
    wf = Workflow("shop")

    def refund(input: Any) -> None:
        return None

    @wf.task(compensate=refund)
    def charge(input: Any) -> None:
        return None

    assert wf.definition().steps[0].compensate == "shop.refund"
    assert wf.handlers["shop.refund"].fn is refund


def test_light_local_checks() -> None:
    wf = Workflow("w")
    wf.wait("pause_a", seconds=1)
    with pytest.raises(ValueError, match="duplicate step"):
        wf.log("pause_a", "again")
    with pytest.raises(ValueError, match="reserved"):
        wf.log("complete", "no")
    with pytest.raises(ValueError):
        wf.wait("neg", seconds=-1)
    with pytest.raises(ValueError):
        wf.transition("pause_a", "x", on="maybe")  # type: ignore[arg-type]
    wf.trigger("manual")
    with pytest.raises(ValueError, match="duplicate trigger"):
        wf.trigger("manual")
    with pytest.raises(ValueError):
        wf.trigger("t2", time_zone="Europe/Paris")
    with pytest.raises(ValueError):
        Field("x", "float")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Retry(max_attempts=0)
    with pytest.raises(ValueError):
        Retry(jitter=2)
    with pytest.raises(TypeError):
        wf.task(input="amount")(lambda input: input)
    with pytest.raises(TypeError):
        wf.task(lambda: None)


def test_definition_is_a_fresh_copy() -> None:
    wf = build()
    first = wf.definition()
    first.steps[0].name = "changed"
    assert wf.definition().steps[0].name == "validate"
    assert wf.definition() == wf.definition()
