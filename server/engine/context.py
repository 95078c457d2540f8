"""The run context: the payload plus each step's output. Paths, conditions, step input and output,
and the choice of the next transition.

Functions return new containers and never mutate the context; nested values are shared, not
copied, so callers must treat them as read-only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence

from server.engine.model import JSON, Condition, Operator, Outcome, Step, Transition
from server.engine.payload import is_number


def get_path(context: Mapping[str, JSON], path: str) -> tuple[bool, JSON]:
    """(found, value) at a dotted path such as "order.items.0.sku"; digits index lists."""
    value: JSON = context
    for segment in path.split("."):
        if isinstance(value, Mapping) and segment in value:
            value = value[segment]
        elif isinstance(value, list) and segment.isascii() and segment.isdigit():
            index = int(segment)
            if index >= len(value):
                return False, None
            value = value[index]
        else:
            return False, None
    return True, value


def json_equal(a: JSON, b: JSON) -> bool:
    """Equality of JSON values: 1 == 1.0, but true is not 1 (as it is in Python)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict | list) or isinstance(b, dict | list):
        return False
    return bool(a == b)


def evaluate(condition: Condition, context: Mapping[str, JSON]) -> bool:
    """Whether the condition holds. An absent path only satisfies not_equals; ordering
    comparisons hold only between numbers."""
    found, actual = get_path(context, condition.path)
    if condition.operator is Operator.NOT_EQUALS:
        return not found or not json_equal(actual, condition.value)
    if not found:
        return False
    if condition.operator is Operator.EQUALS:
        return json_equal(actual, condition.value)
    if not (is_number(actual) and is_number(condition.value)):
        return False
    if condition.operator is Operator.GREATER_THAN:
        return bool(actual > condition.value)
    return bool(actual < condition.value)


def select_input(step: Step, context: Mapping[str, JSON]) -> dict[str, JSON]:
    """The step's input: the whole context, or the selected keys and named paths (which exist:
    a step whose input is missing fails before it is scheduled, see `missing_input`)."""
    selection = step.input
    if selection is None:
        return dict(context)
    selected = {key: context[key] for key in selection.keys if key in context}
    for name, path in selection.paths:
        found, value = get_path(context, path)
        if found:
            selected[name] = value
    return selected


def missing_input(step: Step, context: Mapping[str, JSON]) -> list[dict[str, str]]:
    """Each selected key or named path of the step's input that the context lacks, as
    {"input": name, "path": path}, in declaration order."""
    selection = step.input
    if selection is None:
        return []
    missing = [{"input": key, "path": key} for key in selection.keys if key not in context]
    missing += [
        {"input": name, "path": path}
        for name, path in selection.paths
        if not get_path(context, path)[0]
    ]
    return missing


def merge_output(context: Mapping[str, JSON], step: Step, output: JSON) -> dict[str, JSON]:
    """The context after the step's output: under its output key when set, else an object output
    merged into the top level, else any other output under the step's name."""
    merged = dict(context)
    if step.output_key:
        merged[step.output_key] = output
    elif isinstance(output, dict):
        merged.update(output)
    else:
        merged[step.name] = output
    return merged


def choose_transition(
    transitions: Sequence[Transition], step: str, outcome: Outcome, context: Mapping[str, JSON]
) -> Transition | None:
    """The first matching conditional transition of (step, outcome) in declaration order, else
    the unconditional one, else None."""
    candidates = [t for t in transitions if t.from_step == step and t.on == outcome]
    for transition in candidates:
        if transition.condition is not None and evaluate(transition.condition, context):
            return transition
    return next((t for t in candidates if t.condition is None), None)


_PLACEHOLDER = re.compile(r"\{([A-Za-z0-9_.-]+)\}")


def template_paths(template: str) -> list[str]:
    """The "{dotted.path}" placeholders of a template, in order."""
    return _PLACEHOLDER.findall(template)


def missing_paths(template: str, context: Mapping[str, JSON]) -> list[dict[str, str]]:
    """The placeholders of a template (a correlation key) that the context lacks, as
    `missing_input` reports inputs."""
    return [
        {"input": path, "path": path}
        for path in template_paths(template)
        if not get_path(context, path)[0]
    ]


def render(template: str, context: Mapping[str, JSON]) -> str:
    """A log step's message with each "{dotted.path}" replaced by that context value (JSON for
    objects and lists); placeholders that match nothing are left as they are."""

    def substitute(match: re.Match[str]) -> str:
        found, value = get_path(context, match.group(1))
        if not found:
            return match.group(0)
        if isinstance(value, str):
            return value
        if isinstance(value, float) and value.is_integer():
            return str(int(value))  # JSON numbers cross protobuf as doubles: 3, not 3.0
        return json.dumps(value, separators=(",", ":"))

    return _PLACEHOLDER.sub(substitute, template)
