"""Semantic checks of a workflow definition at registration.

Every problem is reported, each as a field violation whose path names the field of the v1
`WorkflowDefinition` message (e.g. `definition.steps[2].task.handler`), so a client can point at it.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

from server.engine.context import template_paths
from server.engine.errors import FieldViolation
from server.engine.model import (
    COMPLETE,
    DeadlineAction,
    FieldType,
    Operator,
    Outcome,
    RetryPolicy,
    Step,
    StepKind,
    Transition,
    Trigger,
    WorkflowDef,
)
from server.engine.payload import NOW, TODAY, conform_value, is_number
from server.engine.schedule import (
    InvalidCronExpression,
    InvalidTimeZone,
    parse_cron,
    parse_time_zone,
)

WORKFLOW_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,127}")
STEP_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,127}")
MAX_ATTEMPTS_LIMIT = 1000
MIN_HEARTBEAT_TIMEOUT_MS = 1000


def validate_definition(defn: WorkflowDef) -> list[FieldViolation]:
    """Every problem of the definition; empty when it is valid."""
    out: list[FieldViolation] = []
    if not defn.name:
        out.append(FieldViolation("definition.name", "is required"))
    elif not WORKFLOW_NAME.fullmatch(defn.name):
        out.append(FieldViolation("definition.name", f"must match {WORKFLOW_NAME.pattern}"))
    _check_triggers(defn.triggers, out)
    _check_steps(defn.steps, out)
    names = {s.name for s in defn.steps}
    _check_transitions(defn.transitions, names, out)
    _check_after(defn.steps, names, out)
    for i, step in enumerate(defn.steps):
        target = step.on_deadline_step
        if not target:
            continue
        where = f"definition.steps[{i}].approval.on_deadline_step"
        if defn.uses_dependencies:
            out.append(FieldViolation(where, "needs transitions ('after' steps have no routes)"))
        elif target != COMPLETE and target not in names:
            out.append(FieldViolation(where, f"unknown step '{target}'"))
    if defn.transitions and defn.uses_dependencies:
        out.append(
            FieldViolation(
                "definition.transitions",
                "cannot be combined with step dependencies ('after'); use one or the other",
            )
        )
    elif defn.uses_dependencies:
        _check_dependency_graph(defn.steps, out)
    elif defn.steps:
        _check_transition_graph(defn, out)
    return out


# --- triggers ----------------------------------------------------------------------------------


def _check_triggers(triggers: Sequence[Trigger], out: list[FieldViolation]) -> None:
    if not triggers:
        out.append(FieldViolation("definition.triggers", "at least one trigger is required"))
    _check_unique([t.name for t in triggers], "definition.triggers[{}].name", "trigger", out)
    for i, trigger in enumerate(triggers):
        where = f"definition.triggers[{i}]"
        _check_unique(
            [f.name for f in trigger.payload], where + ".payload[{}].name", "payload field", out
        )
        for j, field in enumerate(trigger.payload):
            if field.default is None:
                continue
            if field.type is FieldType.TIMESTAMP and field.default in (NOW, TODAY):
                continue
            _, problem = conform_value(field.type, field.default)
            if problem:
                out.append(FieldViolation(f"{where}.payload[{j}].default_value", problem))
        if trigger.cron is not None:
            _check_cron(trigger.cron, trigger.time_zone, where, out)
            _check_schedule_options(trigger, where, out)


def _check_schedule_options(trigger: Trigger, where: str, out: list[FieldViolation]) -> None:
    if (
        trigger.start_ms is not None
        and trigger.end_ms is not None
        and trigger.end_ms < trigger.start_ms
    ):
        out.append(FieldViolation(f"{where}.cron.end_time", "must not be before start_time"))
    if trigger.max_catchup_runs < 0:
        out.append(FieldViolation(f"{where}.cron.max_catchup_runs", "must not be negative"))
    # The schedule's runs start with an empty payload: nothing can supply a required field.
    for j, field in enumerate(trigger.payload):
        if field.required and field.default is None:
            out.append(
                FieldViolation(
                    f"{where}.payload[{j}].required",
                    "a cron trigger's runs start with an empty payload: a required field "
                    "needs a default",
                )
            )


def _check_cron(cron: str, time_zone: str, where: str, out: list[FieldViolation]) -> None:
    check_cron_spec(cron, time_zone, f"{where}.cron.expression", f"{where}.cron.time_zone", out)


def check_cron_spec(
    expression: str,
    time_zone: str,
    expression_field: str,
    zone_field: str,
    out: list[FieldViolation],
) -> None:
    """A cron expression and time zone, checked by the schedule engine's own parser, so that
    registration and the schedule API report the same errors."""
    if not expression:
        out.append(FieldViolation(expression_field, "is required"))
    else:
        try:
            parse_cron(expression)
        except InvalidCronExpression as error:
            out.append(
                FieldViolation(
                    expression_field, f"{expression!r} is not a valid cron expression: {error}"
                )
            )
    try:
        parse_time_zone(time_zone)
    except InvalidTimeZone as error:
        out.append(FieldViolation(zone_field, str(error)))


# --- steps -------------------------------------------------------------------------------------


def _check_steps(steps: Sequence[Step], out: list[FieldViolation]) -> None:
    if not steps:
        out.append(FieldViolation("definition.steps", "at least one step is required"))
    _check_unique([s.name for s in steps], "definition.steps[{}].name", "step", out)
    for i, step in enumerate(steps):
        where = f"definition.steps[{i}]"
        if step.name == COMPLETE:
            out.append(FieldViolation(f"{where}.name", f"'{COMPLETE}' is reserved"))
        elif step.name and not STEP_NAME.fullmatch(step.name):
            out.append(FieldViolation(f"{where}.name", f"must match {STEP_NAME.pattern}"))
        if step.kind is StepKind.TASK:
            if not step.handler:
                out.append(FieldViolation(f"{where}.task.handler", "is required"))
            if not step.queue:
                out.append(FieldViolation(f"{where}.task.queue", "is required"))
        if step.kind is StepKind.WAIT and step.wait_ms <= 0:
            out.append(FieldViolation(f"{where}.wait.duration", "must be positive"))
        if step.kind.gate:
            _check_gate(step, where, out)
        if step.kind is not StepKind.TASK:
            for option in _task_options(step):
                out.append(
                    FieldViolation(
                        f"{where}.{option}", f"a {step.kind.value} step takes no {option}"
                    )
                )
        elif step.compensate and step.irreversible:
            out.append(
                FieldViolation(
                    f"{where}.compensate", "an irreversible step is never compensated: drop one"
                )
            )
        if step.retry is not None:
            _check_retry(step.retry, f"{where}.retry", out)
        if step.attempt_timeout_ms is not None and step.attempt_timeout_ms <= 0:
            out.append(FieldViolation(f"{where}.attempt_timeout", "must be positive"))
        if (
            step.heartbeat_timeout_ms is not None
            and step.heartbeat_timeout_ms < MIN_HEARTBEAT_TIMEOUT_MS
        ):
            out.append(
                FieldViolation(
                    f"{where}.heartbeat_timeout", f"must be at least {MIN_HEARTBEAT_TIMEOUT_MS} ms"
                )
            )
        if step.output_key:
            _check_key(step.output_key, f"{where}.output_key", out)
        if step.input is not None:
            for j, key in enumerate(step.input.keys):
                _check_key(key, f"{where}.input.keys[{j}]", out)
            for name, path in step.input.paths:
                if not name:
                    out.append(FieldViolation(f"{where}.input.paths", "names must not be empty"))
                _check_path(path, f"{where}.input.paths[{name}]", out)


def _task_options(step: Step) -> list[str]:
    """The options only a task step can have, that `step` sets."""
    options = {
        "retry": step.retry is not None,
        "attempt_timeout": step.attempt_timeout_ms is not None,
        "heartbeat_timeout": step.heartbeat_timeout_ms is not None,
        "input": step.input is not None,
        # Gates have an output (the decision, the event, the child's result).
        "output_key": bool(step.output_key) and not step.kind.gate,
        "compensate": bool(step.compensate),
    }
    return [name for name, present in options.items() if present]


MAX_REQUIRED_APPROVALS = 100
EVENT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:/-]{0,255}")


def _check_gate(step: Step, where: str, out: list[FieldViolation]) -> None:
    """The options of a pause, approval, wait_event or wait_child step."""
    kind = step.kind.value
    if step.deadline_ms is not None and step.deadline_ms <= 0:
        out.append(FieldViolation(f"{where}.{kind}.deadline", "must be positive"))
    if step.kind is StepKind.APPROVAL:
        if not 1 <= step.required_approvals <= MAX_REQUIRED_APPROVALS:
            out.append(
                FieldViolation(
                    f"{where}.approval.required_approvals",
                    f"must be between 1 and {MAX_REQUIRED_APPROVALS}",
                )
            )
        fields = step.decision_fields
        _check_unique([f.name for f in fields], where + ".approval.fields[{}].name", "field", out)
        for j, field in enumerate(fields):
            if not field.name:
                out.append(FieldViolation(f"{where}.approval.fields[{j}].name", "is required"))
            if field.default is not None:
                _, problem = conform_value(field.type, field.default)
                if problem:
                    out.append(
                        FieldViolation(f"{where}.approval.fields[{j}].default_value", problem)
                    )
        routed = step.on_deadline is DeadlineAction.ROUTE
        if routed and not step.on_deadline_step:
            out.append(
                FieldViolation(
                    f"{where}.approval.on_deadline_step", "is required with DEADLINE_ACTION_ROUTE"
                )
            )
        if step.on_deadline_step and not routed:
            out.append(
                FieldViolation(
                    f"{where}.approval.on_deadline_step", "needs on_deadline DEADLINE_ACTION_ROUTE"
                )
            )
        if step.on_deadline is not DeadlineAction.REJECT and step.deadline_ms is None:
            out.append(
                FieldViolation(f"{where}.approval.on_deadline", "needs a deadline to act on")
            )
    elif step.kind is StepKind.WAIT_EVENT:
        if not step.event:
            out.append(FieldViolation(f"{where}.wait_event.event", "is required"))
        elif not EVENT_NAME.fullmatch(step.event):
            out.append(
                FieldViolation(f"{where}.wait_event.event", f"must match {EVENT_NAME.pattern}")
            )
        _check_template(step.correlation_key, f"{where}.wait_event.correlation_key", out)
    elif step.kind is StepKind.WAIT_CHILD:
        _check_template(step.correlation_key, f"{where}.wait_child.key", out)


def _check_template(template: str, where: str, out: list[FieldViolation]) -> None:
    """A correlation key or child key: required, at most 256 characters, paths well formed."""
    if not template:
        out.append(FieldViolation(where, "is required"))
    elif len(template) > 256:
        out.append(FieldViolation(where, "must be at most 256 characters"))
    for path in template_paths(template):
        _check_path(path, where, out)


def _check_retry(policy: RetryPolicy, where: str, out: list[FieldViolation]) -> None:
    if not 1 <= policy.max_attempts <= MAX_ATTEMPTS_LIMIT:
        out.append(
            FieldViolation(f"{where}.max_attempts", f"must be between 1 and {MAX_ATTEMPTS_LIMIT}")
        )
    if policy.initial_delay_ms < 0:
        out.append(FieldViolation(f"{where}.initial_delay", "must not be negative"))
    if policy.max_delay_ms is not None and policy.max_delay_ms < policy.initial_delay_ms:
        out.append(FieldViolation(f"{where}.max_delay", "must not be less than initial_delay"))
    # The negated comparisons also reject NaN.
    if not (math.isfinite(policy.multiplier) and policy.multiplier >= 1):
        out.append(FieldViolation(f"{where}.multiplier", "must be at least 1"))
    if not 0 <= policy.jitter <= 1:
        out.append(FieldViolation(f"{where}.jitter", "must be between 0 and 1"))
    for j, error_type in enumerate(policy.non_retryable_error_types):
        if not error_type:
            out.append(FieldViolation(f"{where}.non_retryable_error_types[{j}]", "is empty"))


def _check_key(key: str, where: str, out: list[FieldViolation]) -> None:
    # A top-level context key: a dot would make it unreachable by paths.
    if not key:
        out.append(FieldViolation(where, "must not be empty"))
    elif "." in key:
        out.append(FieldViolation(where, f"{key!r} must not contain '.'"))


def _check_path(path: str, where: str, out: list[FieldViolation]) -> None:
    if not path:
        out.append(FieldViolation(where, "must not be empty"))
    elif "" in path.split("."):
        out.append(FieldViolation(where, f"{path!r} has an empty segment"))


# --- transitions and dependencies --------------------------------------------------------------


def _check_transitions(
    transitions: Sequence[Transition], names: set[str], out: list[FieldViolation]
) -> None:
    unconditional: dict[tuple[str, Outcome], int] = {}
    for i, t in enumerate(transitions):
        where = f"definition.transitions[{i}]"
        if t.from_step not in names:
            problem = f"unknown step '{t.from_step}'" if t.from_step else "is required"
            out.append(FieldViolation(f"{where}.from_step", problem))
        if t.to != COMPLETE and t.to not in names:
            problem = f"unknown step '{t.to}'" if t.to else "is required"
            out.append(FieldViolation(f"{where}.to", problem))
        if t.condition is None:
            first = unconditional.setdefault((t.from_step, t.on), i)
            if first != i:
                out.append(
                    FieldViolation(
                        where,
                        f"second unconditional transition from '{t.from_step}' on {t.on} "
                        f"(the first is transitions[{first}])",
                    )
                )
            continue
        _check_path(t.condition.path, f"{where}.condition.path", out)
        ordering = (Operator.GREATER_THAN, Operator.LESS_THAN)
        if t.condition.operator in ordering and not is_number(t.condition.value):
            out.append(
                FieldViolation(
                    f"{where}.condition.value", f"must be a number for {t.condition.operator}"
                )
            )


def _check_after(steps: Sequence[Step], names: set[str], out: list[FieldViolation]) -> None:
    for i, step in enumerate(steps):
        for j, prerequisite in enumerate(step.after):
            where = f"definition.steps[{i}].after[{j}]"
            if prerequisite == step.name:
                out.append(FieldViolation(where, "a step cannot come after itself"))
            elif prerequisite not in names:
                out.append(FieldViolation(where, f"unknown step '{prerequisite}'"))


def _check_transition_graph(defn: WorkflowDef, out: list[FieldViolation]) -> None:
    names = {s.name for s in defn.steps}
    edges: dict[str, list[tuple[str, str]]] = {}
    for i, t in enumerate(defn.transitions):
        if t.from_step in names and t.to in names:
            edges.setdefault(t.from_step, []).append((t.to, f"definition.transitions[{i}].to"))
    for i, step in enumerate(defn.steps):  # an approval's deadline route is an edge too
        if step.on_deadline_step in names:
            edges.setdefault(step.name, []).append(
                (step.on_deadline_step, f"definition.steps[{i}].approval.on_deadline_step")
            )
    _report_cycles([s.name for s in defn.steps], edges, out)

    entry = defn.steps[0].name
    reached = _reachable(entry, edges)
    routes: dict[str, set[Outcome]] = {}
    for t in defn.transitions:
        routes.setdefault(t.from_step, set()).add(t.on)
    for i, step in enumerate(defn.steps):
        if step.name not in reached:
            out.append(
                FieldViolation(
                    f"definition.steps[{i}]",
                    f"step '{step.name}' is not reachable from the entry step '{entry}'",
                )
            )
        if step.kind is StepKind.APPROVAL:
            for outcome, meaning in ((Outcome.OK, "approved"), (Outcome.ERROR, "rejected")):
                if outcome not in routes.get(step.name, ()):
                    out.append(
                        FieldViolation(
                            f"definition.steps[{i}]",
                            f"approval step '{step.name}' needs an {outcome} transition "
                            f"({meaning})",
                        )
                    )


def _check_dependency_graph(steps: Sequence[Step], out: list[FieldViolation]) -> None:
    names = {s.name for s in steps}
    edges: dict[str, list[tuple[str, str]]] = {}
    for i, step in enumerate(steps):
        for j, prerequisite in enumerate(step.after):
            if prerequisite in names and prerequisite != step.name:
                edges.setdefault(prerequisite, []).append(
                    (step.name, f"definition.steps[{i}].after[{j}]")
                )
    _report_cycles([s.name for s in steps], edges, out)
    if all(s.after for s in steps):
        out.append(
            FieldViolation(
                "definition.steps", "no entry step: every step has prerequisites ('after')"
            )
        )


def _report_cycles(
    nodes: Iterable[str], edges: Mapping[str, list[tuple[str, str]]], out: list[FieldViolation]
) -> None:
    """One violation per back edge found by a depth-first search, naming the cycle's steps.

    Iterative, so a long chain of steps cannot exhaust the recursion limit.
    """
    done: set[str] = set()
    for root in nodes:
        if root in done:
            continue
        path = [root]
        on_path = {root}  # the path as a set: a chain of n steps is checked in O(n), not O(n²)
        stack = [iter(edges.get(root, ()))]
        while stack:
            for target, where in stack[-1]:
                if target in on_path:
                    cycle = [*path[path.index(target) :], target]
                    out.append(FieldViolation(where, "creates a cycle: " + " -> ".join(cycle)))
                elif target not in done:
                    path.append(target)
                    on_path.add(target)
                    stack.append(iter(edges.get(target, ())))
                    break
            else:
                finished = path.pop()
                on_path.discard(finished)
                done.add(finished)
                stack.pop()


def _reachable(entry: str, edges: Mapping[str, list[tuple[str, str]]]) -> set[str]:
    reached = {entry}
    frontier = [entry]
    while frontier:
        for target, _ in edges.get(frontier.pop(), ()):
            if target not in reached:
                reached.add(target)
                frontier.append(target)
    return reached


def _check_unique(
    names: Sequence[str],
    field: str,
    noun: str,
    out: list[FieldViolation],
) -> None:
    """Empty names (all of them) and repeated names (each repeat after the first)."""
    counts = Counter[str]()
    for i, name in enumerate(names):
        if not name:
            out.append(FieldViolation(field.format(i), "is required"))
            continue
        counts[name] += 1
        if counts[name] > 1:
            out.append(FieldViolation(field.format(i), f"duplicate {noun} name '{name}'"))
