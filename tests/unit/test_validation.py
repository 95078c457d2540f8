from __future__ import annotations

from dataclasses import replace
from itertools import pairwise

import pytest

from server.engine.model import (
    COMPLETE,
    Backoff,
    Condition,
    FieldType,
    InputSelection,
    Operator,
    Outcome,
    PayloadField,
    RetryPolicy,
    Step,
    StepKind,
    Transition,
    Trigger,
    WorkflowDef,
)
from server.engine.validation import validate_definition

MANUAL = Trigger(name="manual", payload=(PayloadField("amount", FieldType.INTEGER, True),))


def task(name: str, **kwargs: object) -> Step:
    return Step(name=name, kind=StepKind.TASK, handler=f"h.{name}", queue="q", **kwargs)  # type: ignore[arg-type]


def ok(from_step: str, to: str, condition: Condition | None = None) -> Transition:
    return Transition(from_step, Outcome.OK, to, condition)


def chain(*steps: Step, transitions: tuple[Transition, ...] | None = None) -> WorkflowDef:
    """A workflow whose steps run in declaration order, unless transitions are given."""
    if transitions is None:
        names = [s.name for s in steps] + [COMPLETE]
        transitions = tuple(ok(a, b) for a, b in pairwise(names))
    return WorkflowDef(name="payment", triggers=(MANUAL,), steps=steps, transitions=transitions)


def problems(defn: WorkflowDef) -> dict[str, str]:
    violations = validate_definition(defn)
    found = {v.field: v.description for v in violations}
    assert len(found) == len(violations), "one problem per field expected"
    return found


def test_a_valid_workflow_has_no_problems() -> None:
    defn = chain(
        task("charge", retry=RetryPolicy(max_attempts=5, max_delay_ms=60_000, jitter=0.2)),
        Step("cool_down", StepKind.WAIT, wait_ms=500),
        Step("approve", StepKind.APPROVAL),
        transitions=(
            ok("charge", "cool_down"),
            Transition("charge", Outcome.ERROR, COMPLETE),
            ok("cool_down", "approve"),
            ok("approve", COMPLETE),
            Transition("approve", Outcome.ERROR, COMPLETE),
        ),
    )
    assert validate_definition(defn) == []


def test_a_valid_dependency_workflow_has_no_problems() -> None:
    defn = chain(
        task("a"), task("b", after=("a",)), task("c", after=("a",)), task("d", after=("b", "c"))
    )
    defn = replace(defn, transitions=())
    assert validate_definition(defn) == []


@pytest.mark.parametrize("name", ["", "Payment", "-pay", "pay ment", "x" * 129])
def test_workflow_name_must_be_well_formed(name: str) -> None:
    assert "definition.name" in problems(replace(chain(task("a")), name=name))


@pytest.mark.parametrize("name", ["payment", "0pay", "billing.payment-v2_x", "x" * 128])
def test_workflow_name_accepts_lowercase_names(name: str) -> None:
    assert problems(replace(chain(task("a")), name=name)) == {}


def test_every_problem_is_reported_not_just_the_first() -> None:
    defn = WorkflowDef(
        name="",
        triggers=(),
        steps=(Step("a", StepKind.TASK, queue="q"), Step("b", StepKind.WAIT)),
        transitions=(ok("a", "b"), ok("b", "nowhere")),
    )
    assert problems(defn) == {
        "definition.name": "is required",
        "definition.triggers": "at least one trigger is required",
        "definition.steps[0].task.handler": "is required",
        "definition.steps[1].wait.duration": "must be positive",
        "definition.transitions[1].to": "unknown step 'nowhere'",
    }


def test_trigger_names_must_be_present_and_unique() -> None:
    defn = replace(
        chain(task("a")), triggers=(MANUAL, Trigger(""), Trigger("manual"), Trigger("manual"))
    )
    assert problems(defn) == {
        "definition.triggers[1].name": "is required",
        "definition.triggers[2].name": "duplicate trigger name 'manual'",
        "definition.triggers[3].name": "duplicate trigger name 'manual'",
    }


def test_payload_fields_must_be_unique_and_defaults_must_match_their_type() -> None:
    fields = (
        PayloadField("n", FieldType.INTEGER, default=5.0),
        PayloadField("n", FieldType.STRING),
        PayloadField("count", FieldType.INTEGER, default=1.5),
        PayloadField("flag", FieldType.BOOLEAN, default=1),
        PayloadField("at", FieldType.TIMESTAMP, default="now"),
        PayloadField("on", FieldType.TIMESTAMP, default="today"),
        PayloadField("since", FieldType.TIMESTAMP, default="2024-02-30"),
        PayloadField("until", FieldType.TIMESTAMP, default="2024-02-01T10:00:00Z"),
        PayloadField("tags", FieldType.LIST, default=[]),
    )
    defn = replace(chain(task("a")), triggers=(MANUAL, Trigger("other", payload=fields)))
    assert problems(defn) == {
        "definition.triggers[1].payload[1].name": "duplicate payload field name 'n'",
        "definition.triggers[1].payload[2].default_value": "must be an integer, got number",
        "definition.triggers[1].payload[3].default_value": "must be a boolean, got integer",
        "definition.triggers[1].payload[6].default_value": (
            "must be an RFC 3339 timestamp or a date (YYYY-MM-DD), got '2024-02-30'"
        ),
    }


def test_cron_triggers_need_a_valid_expression_and_time_zone() -> None:
    triggers = (
        Trigger("nightly", cron="0 3 * * *", time_zone="Europe/Paris"),
        Trigger("broken", cron="61 * * * *", time_zone="Mars/Olympus"),
        Trigger("empty", cron=""),
        Trigger("sneaky", cron="0 3 * * *", time_zone="../etc/passwd"),
        Trigger("never", cron="0 0 30 2 *"),
        Trigger("seconds", cron="*/10 * * * * *"),
        Trigger("shorthand", cron="@daily", time_zone="Australia/Lord_Howe"),
    )
    assert problems(replace(chain(task("a")), triggers=triggers)) == {
        "definition.triggers[1].cron.expression": (
            "'61 * * * *' is not a valid cron expression: minute 61 is out of range 0-59"
        ),
        "definition.triggers[1].cron.time_zone": "'Mars/Olympus' is not an IANA time zone",
        "definition.triggers[2].cron.expression": "is required",
        "definition.triggers[3].cron.time_zone": "'../etc/passwd' is not an IANA time zone",
        "definition.triggers[4].cron.expression": (
            "'0 0 30 2 *' is not a valid cron expression: "
            "day-of-month 30 never occurs in month(s) 2"
        ),
    }


def test_cron_trigger_options_are_checked() -> None:
    defn = replace(
        chain(task("a")),
        triggers=(
            Trigger(
                "nightly",
                cron="0 3 * * *",
                start_ms=2_000,
                end_ms=1_000,
                max_catchup_runs=-1,
                payload=(
                    PayloadField("day", FieldType.STRING, required=True),
                    PayloadField("at", FieldType.TIMESTAMP, required=True, default="now"),
                ),
            ),
            # A manual trigger's required fields come from StartRun.
            Trigger("manual", payload=(PayloadField("day", FieldType.STRING, required=True),)),
        ),
    )
    assert problems(defn) == {
        "definition.triggers[0].cron.end_time": "must not be before start_time",
        "definition.triggers[0].cron.max_catchup_runs": "must not be negative",
        "definition.triggers[0].payload[0].required": (
            "a cron trigger's runs start with an empty payload: a required field needs a default"
        ),
    }


def test_steps_are_required() -> None:
    defn = chain(transitions=())
    assert problems(defn) == {"definition.steps": "at least one step is required"}


def test_step_names_must_be_present_unique_well_formed_and_not_reserved() -> None:
    defn = chain(task("a"), task(""), task("a"), task(COMPLETE), task("9lives"), task("x y"))
    found = problems(defn)
    assert found["definition.steps[1].name"] == "is required"
    assert found["definition.steps[2].name"] == "duplicate step name 'a'"
    assert found["definition.steps[3].name"] == "'complete' is reserved"
    assert "must match" in found["definition.steps[4].name"]
    assert "must match" in found["definition.steps[5].name"]


def test_step_kinds_have_their_requirements() -> None:
    defn = chain(
        Step("t", StepKind.TASK, handler="", queue=""),
        Step("w", StepKind.WAIT, wait_ms=0),
        Step("l", StepKind.LOG),
        Step("p", StepKind.PAUSE),
    )
    assert problems(defn) == {
        "definition.steps[0].task.handler": "is required",
        "definition.steps[0].task.queue": "is required",
        "definition.steps[1].wait.duration": "must be positive",
    }


def test_options_of_task_steps_are_refused_on_other_kinds() -> None:
    defn = chain(
        Step("w", StepKind.WAIT, wait_ms=10, retry=RetryPolicy(), output_key="x"),
        Step("l", StepKind.LOG, attempt_timeout_ms=5, compensate="h.undo", irreversible=True),
    )
    assert problems(defn) == {
        "definition.steps[0].retry": "a wait step takes no retry",
        "definition.steps[0].output_key": "a wait step takes no output_key",
        "definition.steps[1].attempt_timeout": "a log step takes no attempt_timeout",
        "definition.steps[1].compensate": "a log step takes no compensate",
    }


def test_an_irreversible_step_cannot_declare_a_compensation() -> None:
    defn = chain(task("a", compensate="h.undo", irreversible=True))
    assert problems(defn) == {
        "definition.steps[0].compensate": "an irreversible step is never compensated: drop one"
    }


def test_retry_policy_bounds() -> None:
    bad = RetryPolicy(
        max_attempts=0,
        backoff=Backoff.LINEAR,
        initial_delay_ms=-1,
        max_delay_ms=-2,
        multiplier=0.5,
        jitter=1.5,
        non_retryable_error_types=("ValueError", ""),
    )
    assert problems(chain(task("a", retry=bad))) == {
        "definition.steps[0].retry.max_attempts": "must be between 1 and 1000",
        "definition.steps[0].retry.initial_delay": "must not be negative",
        "definition.steps[0].retry.max_delay": "must not be less than initial_delay",
        "definition.steps[0].retry.multiplier": "must be at least 1",
        "definition.steps[0].retry.jitter": "must be between 0 and 1",
        "definition.steps[0].retry.non_retryable_error_types[1]": "is empty",
    }


@pytest.mark.parametrize(
    "policy",
    [
        RetryPolicy(max_attempts=1001),
        RetryPolicy(multiplier=float("nan")),
        RetryPolicy(multiplier=float("inf")),
        RetryPolicy(jitter=float("nan")),
        RetryPolicy(initial_delay_ms=2000, max_delay_ms=1000),
    ],
)
def test_retry_policy_edge_values_are_rejected(policy: RetryPolicy) -> None:
    assert len(problems(chain(task("a", retry=policy)))) == 1


def test_retry_policy_limits_are_inclusive() -> None:
    policy = RetryPolicy(max_attempts=1000, initial_delay_ms=0, max_delay_ms=0, jitter=1.0)
    assert problems(chain(task("a", retry=policy))) == {}


def test_timeouts_must_be_positive_and_heartbeats_at_least_a_second() -> None:
    defn = chain(
        task("a", attempt_timeout_ms=0, heartbeat_timeout_ms=999),
        task("b", attempt_timeout_ms=1, heartbeat_timeout_ms=1000),
    )
    assert problems(defn) == {
        "definition.steps[0].attempt_timeout": "must be positive",
        "definition.steps[0].heartbeat_timeout": "must be at least 1000 ms",
    }


def test_output_key_and_input_selection_must_be_well_formed() -> None:
    selection = InputSelection(
        keys=("order", "", "a.b"), paths=(("", "order"), ("amt", "order..amount"), ("x", ""))
    )
    defn = chain(task("a", output_key="charge.result", input=selection))
    assert problems(defn) == {
        "definition.steps[0].output_key": "'charge.result' must not contain '.'",
        "definition.steps[0].input.keys[1]": "must not be empty",
        "definition.steps[0].input.keys[2]": "'a.b' must not contain '.'",
        "definition.steps[0].input.paths": "names must not be empty",
        "definition.steps[0].input.paths[amt]": "'order..amount' has an empty segment",
        "definition.steps[0].input.paths[x]": "must not be empty",
    }


def test_transitions_must_name_known_steps() -> None:
    defn = chain(task("a"), transitions=(ok("a", COMPLETE), ok("", "a"), ok("ghost", "")))
    assert problems(defn) == {
        "definition.transitions[1].from_step": "is required",
        "definition.transitions[2].from_step": "unknown step 'ghost'",
        "definition.transitions[2].to": "is required",
    }


def test_complete_is_not_a_valid_source() -> None:
    defn = chain(task("a"), transitions=(ok("a", COMPLETE), ok(COMPLETE, "a")))
    assert problems(defn) == {"definition.transitions[1].from_step": "unknown step 'complete'"}


def test_only_one_unconditional_transition_per_step_and_outcome() -> None:
    defn = chain(
        task("a"),
        task("b"),
        transitions=(
            ok("a", "b"),
            Transition("a", Outcome.ERROR, COMPLETE),
            ok("a", COMPLETE, Condition("x", Operator.EQUALS, 1)),
            ok("a", COMPLETE),
            ok("b", COMPLETE),
        ),
    )
    assert problems(defn) == {
        "definition.transitions[3]": (
            "second unconditional transition from 'a' on ok (the first is transitions[0])"
        )
    }


def test_conditions_need_a_path_and_ordering_needs_a_number() -> None:
    def cond(operator: Operator, value: object, path: str = "x") -> Transition:
        return ok("a", COMPLETE, Condition(path, operator, value))

    defn = chain(
        task("a"),
        transitions=(
            cond(Operator.GREATER_THAN, "10"),
            cond(Operator.LESS_THAN, True),
            cond(Operator.EQUALS, "anything", path=""),
            cond(Operator.GREATER_THAN, 10.5, path="x..y"),
            cond(Operator.NOT_EQUALS, None),
            ok("a", COMPLETE),
        ),
    )
    assert problems(defn) == {
        "definition.transitions[0].condition.value": "must be a number for greater_than",
        "definition.transitions[1].condition.value": "must be a number for less_than",
        "definition.transitions[2].condition.path": "must not be empty",
        "definition.transitions[3].condition.path": "'x..y' has an empty segment",
    }


def test_transition_cycles_are_reported_with_their_steps() -> None:
    defn = chain(
        task("a"),
        task("b"),
        task("c"),
        transitions=(ok("a", "b"), ok("b", "c"), ok("c", "a"), Transition("c", Outcome.ERROR, "c")),
    )
    assert problems(defn) == {
        "definition.transitions[2].to": "creates a cycle: a -> b -> c -> a",
        "definition.transitions[3].to": "creates a cycle: c -> c",
    }


def test_a_diamond_is_not_a_cycle() -> None:
    defn = chain(
        task("a"),
        task("b"),
        task("c"),
        task("d"),
        transitions=(
            ok("a", "b"),
            Transition("a", Outcome.ERROR, "c"),
            ok("b", "d"),
            ok("c", "d"),
            ok("d", COMPLETE),
        ),
    )
    assert problems(defn) == {}


def test_long_chains_do_not_hit_the_recursion_limit() -> None:
    defn = chain(*(task(f"s{i}") for i in range(3000)))
    assert problems(defn) == {}


def test_steps_unreachable_from_the_first_step_are_reported() -> None:
    defn = chain(
        task("a"),
        task("b"),
        task("c"),
        task("d"),
        transitions=(ok("a", COMPLETE), ok("c", "d"), ok("d", COMPLETE)),
    )
    assert problems(defn) == {
        "definition.steps[2]": "step 'c' is not reachable from the entry step 'a'",
        "definition.steps[3]": "step 'd' is not reachable from the entry step 'a'",
        "definition.steps[1]": "step 'b' is not reachable from the entry step 'a'",
    }


def test_approval_steps_need_both_outcomes() -> None:
    defn = chain(
        Step("approve", StepKind.APPROVAL),
        Step("review", StepKind.APPROVAL),
        transitions=(
            ok("approve", "review"),
            Transition("review", Outcome.ERROR, COMPLETE),
        ),
    )
    found = validate_definition(defn)
    assert [(v.field, v.description) for v in found] == [
        ("definition.steps[0]", "approval step 'approve' needs an error transition (rejected)"),
        ("definition.steps[1]", "approval step 'review' needs an ok transition (approved)"),
    ]


def test_transitions_and_dependencies_cannot_be_mixed() -> None:
    defn = chain(task("a"), task("b", after=("a",)))
    assert problems(defn) == {
        "definition.transitions": (
            "cannot be combined with step dependencies ('after'); use one or the other"
        )
    }


def test_after_must_name_other_known_steps() -> None:
    defn = chain(task("a"), task("b", after=("b", "ghost", "a")), transitions=())
    assert problems(defn) == {
        "definition.steps[1].after[0]": "a step cannot come after itself",
        "definition.steps[1].after[1]": "unknown step 'ghost'",
    }


def test_dependency_cycles_and_missing_entry_are_reported() -> None:
    defn = chain(
        task("a", after=("c",)), task("b", after=("a",)), task("c", after=("b",)), transitions=()
    )
    assert problems(defn) == {
        "definition.steps[0].after[0]": "creates a cycle: a -> b -> c -> a",
        "definition.steps": "no entry step: every step has prerequisites ('after')",
    }


def test_dependency_cycle_beside_an_entry_step() -> None:
    defn = chain(
        task("start"),
        task("x", after=("start", "y")),
        task("y", after=("x",)),
        transitions=(),
    )
    assert problems(defn) == {"definition.steps[1].after[1]": "creates a cycle: x -> y -> x"}
