"""Payload contract fields of a trigger."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from squidmesh.v1 import workflow_pb2
from squidmesh.values import to_value

__all__ = ["Field", "FieldTypeName"]

FieldTypeName = Literal["string", "integer", "number", "boolean", "object", "list", "timestamp"]

_FIELD_TYPES: dict[str, workflow_pb2.FieldType.ValueType] = {
    "string": workflow_pb2.FIELD_TYPE_STRING,
    "integer": workflow_pb2.FIELD_TYPE_INTEGER,
    "number": workflow_pb2.FIELD_TYPE_NUMBER,
    "boolean": workflow_pb2.FIELD_TYPE_BOOLEAN,
    "object": workflow_pb2.FIELD_TYPE_OBJECT,
    "list": workflow_pb2.FIELD_TYPE_LIST,
    "timestamp": workflow_pb2.FIELD_TYPE_TIMESTAMP,
}


@dataclass(frozen=True)
class Field:
    """One field of a payload contract.

    `default` is a JSON literal of the field's type, or for timestamps "now" / "today";
    None means no default. The server checks types and defaults at registration.
    """

    name: str
    type: FieldTypeName
    required: bool = False
    default: Any = None
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a field needs a name")
        if self.type not in _FIELD_TYPES:
            raise ValueError(
                f"field {self.name!r}: unknown type {self.type!r}; "
                f"expected one of {', '.join(_FIELD_TYPES)}"
            )

    def to_proto(self) -> workflow_pb2.PayloadField:
        field = workflow_pb2.PayloadField(
            name=self.name,
            type=_FIELD_TYPES[self.type],
            required=self.required,
            description=self.description,
        )
        if self.default is not None:
            field.default_value.CopyFrom(to_value(self.default))
        return field
