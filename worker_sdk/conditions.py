"""Conditions of transitions: `when("charge.status").equals("paid")`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from squidmesh.v1 import workflow_pb2
from squidmesh.values import to_value

__all__ = ["Condition", "ConditionPath", "when"]

OperatorName = Literal["equals", "not_equals", "greater_than", "less_than"]

_OPERATORS: dict[str, workflow_pb2.ConditionOperator.ValueType] = {
    "equals": workflow_pb2.CONDITION_OPERATOR_EQUALS,
    "not_equals": workflow_pb2.CONDITION_OPERATOR_NOT_EQUALS,
    "greater_than": workflow_pb2.CONDITION_OPERATOR_GREATER_THAN,
    "less_than": workflow_pb2.CONDITION_OPERATOR_LESS_THAN,
}


@dataclass(frozen=True)
class Condition:
    """A test on the run context: the value at a dotted `path` compared with `value`."""

    path: str
    operator: OperatorName
    value: Any

    def to_proto(self) -> workflow_pb2.Condition:
        return workflow_pb2.Condition(
            path=self.path, operator=_OPERATORS[self.operator], value=to_value(self.value)
        )


@dataclass(frozen=True)
class ConditionPath:
    """A dotted path into the run context, waiting for its comparison."""

    path: str

    def equals(self, value: Any) -> Condition:
        return Condition(self.path, "equals", _json(value))

    def not_equals(self, value: Any) -> Condition:
        return Condition(self.path, "not_equals", _json(value))

    def greater_than(self, value: float) -> Condition:
        return Condition(self.path, "greater_than", _number(value))

    def less_than(self, value: float) -> Condition:
        return Condition(self.path, "less_than", _number(value))


def when(path: str) -> ConditionPath:
    """Starts a condition on the value at `path` (dotted, e.g. "validation.amount")."""
    if not path or path.startswith(".") or path.endswith(".") or ".." in path:
        raise ValueError(f"invalid context path {path!r}")
    return ConditionPath(path)


def _json(value: Any) -> Any:
    to_value(value)  # raises now, at declaration, rather than at definition()
    return value


def _number(value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"greater_than/less_than compare numbers, got {type(value).__name__}")
    _json(value)
    return value
