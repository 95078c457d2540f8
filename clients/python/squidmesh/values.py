"""Conversions between Python values and the protobuf JSON types of the contract
(`google.protobuf.Value`, `Struct`, `Duration`).

JSON semantics, strictly: dict keys must be strings, numbers must be finite, integers must fit
in a double exactly (|n| <= 2**53) — a larger id silently rounded is worse than an error — and
objects and lists nest at most MAX_DEPTH deep, as the server requires.
Tuples become lists. Whole numbers read back from a `Value` become `int`, as `json.loads` would
give them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from google.protobuf import duration_pb2, struct_pb2

__all__ = [
    "from_duration",
    "struct_to_dict",
    "to_duration",
    "to_struct",
    "to_value",
    "value_to_python",
]

MAX_EXACT_INT = 2**53
MAX_DEPTH = 20
"""The deepest nesting of objects and lists the server accepts in a value (protobuf decodes at
most 100 message levels, and each JSON level costs two or three)."""


def to_value(obj: object, *, strict: bool = True) -> struct_pb2.Value:
    """A Python JSON-like value as a `Value`. Raises TypeError/ValueError when it is not JSON.
    `strict=False` is for values checked when they came in, then stored: integers past 2^53
    become the nearest double (a JSON store reads 1e16 back as an integer), and the nesting
    is not limited (a run's context holds outputs one level deeper than they came)."""
    value = struct_pb2.Value()
    _fill_value(value, obj, "$", 0 if strict else None)
    return value


def to_struct(mapping: Mapping[str, object], *, where: str = "$") -> struct_pb2.Struct:
    """A mapping with string keys as a `Struct`. Raises TypeError/ValueError when it is not a
    JSON object; `where` names the value in those errors ("payload", "payload.amount"...)."""
    if not isinstance(mapping, Mapping):
        raise TypeError(f"{where} must be a JSON object, not {_kind(mapping)}")
    struct = struct_pb2.Struct()
    _fill_struct(struct, mapping, where, 1)
    return struct


def value_to_python(value: struct_pb2.Value) -> Any:
    """A `Value` as plain Python (dict, list, str, int/float, bool, None)."""
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return struct_to_dict(value.struct_value)
    if kind == "list_value":
        return [value_to_python(item) for item in value.list_value.values]
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        number = value.number_value
        if number.is_integer() and abs(number) <= MAX_EXACT_INT:
            return int(number)
        return number
    if kind == "bool_value":
        return value.bool_value
    return None  # null_value or unset


def struct_to_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    """A `Struct` as a plain dict."""
    return {key: value_to_python(item) for key, item in struct.fields.items()}


def to_duration(seconds: float | timedelta) -> duration_pb2.Duration:
    """Seconds (float, >= 0) or a `timedelta` as a `Duration`, to the nanosecond."""
    if isinstance(seconds, timedelta):
        if seconds < timedelta(0):
            raise ValueError(f"a duration must be >= 0, got {seconds!r}")
        duration = duration_pb2.Duration()
        duration.FromTimedelta(seconds)
        return duration
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise TypeError(f"a duration is a number of seconds, not {type(seconds).__name__}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"a duration must be a finite number of seconds >= 0, got {seconds!r}")
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(round(seconds * 1_000_000_000))
    return duration


def from_duration(duration: duration_pb2.Duration) -> float:
    """A `Duration` as seconds."""
    return duration.seconds + duration.nanos / 1_000_000_000


def _fill_value(target: struct_pb2.Value, obj: object, where: str, depth: int | None) -> None:
    """`depth`: how many objects and lists `obj` is inside; None when not strict."""
    if depth is not None and depth >= MAX_DEPTH and isinstance(obj, Mapping | list | tuple):
        raise ValueError(f"{where}: nested more than {MAX_DEPTH} objects and lists deep")
    inner = None if depth is None else depth + 1
    if obj is None:
        target.null_value = struct_pb2.NULL_VALUE
    elif isinstance(obj, bool):
        target.bool_value = obj
    elif isinstance(obj, int):
        if depth is not None and abs(obj) > MAX_EXACT_INT:
            raise ValueError(
                f"{where}: integer {obj} does not fit a JSON number exactly; send it as a string"
            )
        target.number_value = obj
    elif isinstance(obj, float):
        if not math.isfinite(obj):
            raise ValueError(f"{where}: {obj!r} is not a JSON number")
        target.number_value = obj
    elif isinstance(obj, str):
        target.string_value = obj
    elif isinstance(obj, Mapping):
        target.struct_value.SetInParent()
        _fill_struct(target.struct_value, obj, where, inner)
    elif isinstance(obj, list | tuple):
        items = target.list_value
        items.SetInParent()
        for index, item in enumerate(obj):
            _fill_value(items.values.add(), item, f"{where}[{index}]", inner)
    else:
        raise TypeError(f"{where}: {type(obj).__name__} is not JSON-serialisable")


def _kind(obj: object) -> str:
    """How a JSON reader would call a value's type: a list, a string, a number..."""
    if obj is None:
        return "null"
    if isinstance(obj, bool):
        return "a boolean"
    if isinstance(obj, int | float):
        return "a number"
    if isinstance(obj, str):
        return "a string"
    if isinstance(obj, list | tuple):
        return "a list"
    return f"a {type(obj).__name__}"


def _fill_struct(
    target: struct_pb2.Struct, mapping: Mapping[Any, object], where: str, depth: int | None
) -> None:
    for key, item in mapping.items():
        if not isinstance(key, str):
            raise TypeError(f"{where}: object keys must be strings, got {type(key).__name__}")
        _fill_value(target.fields[key], item, f"{where}.{key}", depth)
