from __future__ import annotations

import pytest

from server.engine.context import (
    choose_transition,
    evaluate,
    get_path,
    json_equal,
    merge_output,
    missing_input,
    render,
    select_input,
)
from server.engine.model import (
    COMPLETE,
    JSON,
    Condition,
    InputSelection,
    Operator,
    Outcome,
    Step,
    StepKind,
    Transition,
)

CONTEXT: dict[str, JSON] = {
    "order": {"id": "o-1", "amount": 120, "items": [{"sku": "a"}, {"sku": "b"}]},
    "flag": True,
    "none": None,
    "count": 3.0,
}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("order.id", (True, "o-1")),
        ("order.items.1.sku", (True, "b")),
        ("order.items.0", (True, {"sku": "a"})),
        ("none", (True, None)),
        ("order.items.2.sku", (False, None)),
        ("order.items.-1", (False, None)),
        ("order.items.x", (False, None)),
        ("order.id.length", (False, None)),
        ("order.missing", (False, None)),
        ("missing", (False, None)),
        ("", (False, None)),
    ],
)
def test_get_path(path: str, expected: tuple[bool, JSON]) -> None:
    assert get_path(CONTEXT, path) == expected


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [
        (1, 1.0, True),
        (True, 1, False),
        (1, True, False),
        (False, 0, False),
        (True, True, True),
        ("1", 1, False),
        (None, None, True),
        (None, 0, False),
        ({"a": [1, True]}, {"a": [1.0, True]}, True),
        ({"a": [1]}, {"a": [True]}, False),
        ({"a": 1}, {"a": 1, "b": 2}, False),
        ([1, 2], [2, 1], False),
        ([], {}, False),
    ],
)
def test_json_equal(a: JSON, b: JSON, equal: bool) -> None:
    assert json_equal(a, b) is equal


@pytest.mark.parametrize(
    ("path", "operator", "value", "expected"),
    [
        ("order.amount", Operator.EQUALS, 120.0, True),
        ("order.amount", Operator.EQUALS, 121, False),
        ("flag", Operator.EQUALS, 1, False),
        ("flag", Operator.EQUALS, True, True),
        ("none", Operator.EQUALS, None, True),
        ("missing", Operator.EQUALS, None, False),
        ("order.amount", Operator.NOT_EQUALS, 121, True),
        ("order.amount", Operator.NOT_EQUALS, 120, False),
        ("missing", Operator.NOT_EQUALS, 1, True),
        ("order.amount", Operator.GREATER_THAN, 100, True),
        ("order.amount", Operator.GREATER_THAN, 120, False),
        ("order.amount", Operator.LESS_THAN, 120.5, True),
        ("order.amount", Operator.LESS_THAN, 120, False),
        ("count", Operator.GREATER_THAN, 2, True),
        ("flag", Operator.GREATER_THAN, 0, False),
        ("order.id", Operator.GREATER_THAN, 0, False),
        ("order.amount", Operator.GREATER_THAN, "100", False),
        ("missing", Operator.LESS_THAN, 1, False),
    ],
)
def test_evaluate(path: str, operator: Operator, value: JSON, expected: bool) -> None:
    assert evaluate(Condition(path, operator, value), CONTEXT) is expected


def test_select_input_without_selection_copies_the_whole_context() -> None:
    selected = select_input(Step("s", StepKind.TASK), CONTEXT)
    assert selected == CONTEXT
    selected["extra"] = 1
    assert "extra" not in CONTEXT


def test_select_input_with_keys_and_paths_takes_what_exists() -> None:
    step = Step(
        "s",
        StepKind.TASK,
        input=InputSelection(
            keys=("flag", "missing", "none"),
            paths=(("amt", "order.amount"), ("gone", "order.nope"), ("sku", "order.items.0.sku")),
        ),
    )
    assert select_input(step, CONTEXT) == {"flag": True, "none": None, "amt": 120, "sku": "a"}


def test_missing_input_names_every_key_and_path_the_context_lacks() -> None:
    step = Step(
        "s",
        StepKind.TASK,
        input=InputSelection(
            keys=("flag", "missing", "none"),
            paths=(("amt", "order.amount"), ("gone", "order.nope"), ("sku", "order.items.9.sku")),
        ),
    )
    assert missing_input(step, CONTEXT) == [
        {"input": "missing", "path": "missing"},
        {"input": "gone", "path": "order.nope"},
        {"input": "sku", "path": "order.items.9.sku"},
    ]
    # null is a value: a key present as null is not missing.
    assert (
        missing_input(Step("s", StepKind.TASK, input=InputSelection(keys=("none",))), CONTEXT) == []
    )
    assert missing_input(Step("s", StepKind.TASK), {}) == []  # the whole context, whatever it is


def test_select_input_with_an_empty_selection_is_empty() -> None:
    assert select_input(Step("s", StepKind.TASK, input=InputSelection()), CONTEXT) == {}


def test_merge_output_under_the_output_key() -> None:
    step = Step("charge", StepKind.TASK, output_key="charge")
    merged = merge_output({"a": 1, "charge": "old"}, step, {"status": "ok"})
    assert merged == {"a": 1, "charge": {"status": "ok"}}


def test_merge_output_merges_an_object_into_the_top_level() -> None:
    context = {"a": 1, "b": 2}
    merged = merge_output(context, Step("s", StepKind.TASK), {"b": 3, "c": 4})
    assert merged == {"a": 1, "b": 3, "c": 4}
    assert context == {"a": 1, "b": 2}, "the context is not mutated"


@pytest.mark.parametrize("output", [[1, 2], "done", 7, None])
def test_merge_output_stores_other_outputs_under_the_step_name(output: JSON) -> None:
    merged = merge_output({"a": 1}, Step("s", StepKind.TASK), output)
    assert merged == {"a": 1, "s": output}


def when(operator: Operator, value: JSON) -> Condition:
    return Condition("order.amount", operator, value)


TRANSITIONS = (
    Transition("check", Outcome.OK, "small"),
    Transition("check", Outcome.OK, "big", when(Operator.GREATER_THAN, 100)),
    Transition("check", Outcome.OK, "huge", when(Operator.GREATER_THAN, 1000)),
    Transition("check", Outcome.OK, "exact", when(Operator.EQUALS, 120)),
    Transition("check", Outcome.ERROR, "refund", when(Operator.EQUALS, 120)),
    Transition("other", Outcome.OK, COMPLETE),
)


def amount(value: int) -> dict[str, JSON]:
    return {"order": {"amount": value}}


def test_choose_transition_tries_conditions_in_declaration_order_first() -> None:
    chosen = choose_transition(TRANSITIONS, "check", Outcome.OK, amount(120))
    assert chosen is TRANSITIONS[1]
    chosen = choose_transition(TRANSITIONS, "check", Outcome.OK, amount(5000))
    assert chosen is TRANSITIONS[1], "declaration order, not the most specific"


def test_choose_transition_falls_back_to_the_unconditional_one() -> None:
    assert choose_transition(TRANSITIONS, "check", Outcome.OK, amount(10)) is TRANSITIONS[0]


def test_choose_transition_respects_step_and_outcome() -> None:
    assert choose_transition(TRANSITIONS, "check", Outcome.ERROR, amount(120)) is TRANSITIONS[4]
    assert choose_transition(TRANSITIONS, "check", Outcome.ERROR, amount(10)) is None
    assert choose_transition(TRANSITIONS, "other", Outcome.OK, {}) is TRANSITIONS[5]
    assert choose_transition(TRANSITIONS, "nope", Outcome.OK, {}) is None


def test_render_fills_placeholders_from_the_context() -> None:
    context: dict[str, JSON] = {"order": {"id": "o-1", "items": [{"sku": "A"}], "total": 12.5}}
    assert render("order {order.id}: {order.total} ({order.items.0.sku})", context) == (
        "order o-1: 12.5 (A)"
    )
    assert render("{order.items}", context) == '[{"sku":"A"}]'
    assert render("{missing} and {order.nope} stay", context) == "{missing} and {order.nope} stay"
    assert render("no placeholders", context) == "no placeholders"
    assert render("{n} items", {"n": 3.0}) == "3 items"
