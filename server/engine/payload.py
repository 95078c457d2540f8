"""Payload contracts: type checks of JSON values, defaults, and the payload hash.

Payloads arrive through `google.protobuf.Struct`, where every number is a float; a whole float is
accepted as an integer and normalised to `int`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
from collections.abc import Mapping
from datetime import UTC, date, datetime

from server.engine.errors import FieldViolation, InvalidArgument
from server.engine.model import JSON, FieldType, Trigger

MAX_EXACT_INT = 2**53
"""The largest integer a JSON number (a double) holds exactly."""

NOW = "now"
TODAY = "today"
"""Timestamp defaults resolved when a run starts."""

_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_RFC3339 = re.compile(
    _DATE.pattern + r"[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)

_EXPECTED = {
    FieldType.STRING: "a string",
    FieldType.INTEGER: "an integer",
    FieldType.NUMBER: "a number",
    FieldType.BOOLEAN: "a boolean",
    FieldType.OBJECT: "an object",
    FieldType.LIST: "a list",
    FieldType.TIMESTAMP: "an RFC 3339 timestamp or a date (YYYY-MM-DD)",
}


def is_number(value: JSON) -> bool:
    """A finite JSON number. Python's bool is an int, JSON's is not."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def is_whole(value: JSON) -> bool:
    return is_number(value) and float(value).is_integer()


def json_type_name(value: JSON) -> str:
    """The JSON type of a value, in the words of the payload contract."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if is_whole(value):
        return "integer"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "list"
    return type(value).__name__


def parse_timestamp(text: str) -> datetime | None:
    """An RFC 3339 timestamp, or a YYYY-MM-DD date as midnight UTC; None when it is neither."""
    try:
        if _DATE.fullmatch(text):
            return datetime.combine(date.fromisoformat(text), datetime.min.time(), UTC)
        if _RFC3339.fullmatch(text):
            return datetime.fromisoformat(text.upper())
    except ValueError:  # well-formed but out of range, e.g. month 13
        return None
    return None


def conform_value(field_type: FieldType, value: JSON) -> tuple[JSON, str | None]:
    """The value normalised to the field type, or a description of why it does not fit."""
    match field_type:
        case FieldType.INTEGER:
            # Beyond 2^53 a JSON number (a double) no longer holds every integer exactly.
            fits = is_whole(value) and abs(value) <= MAX_EXACT_INT
            value = int(value) if fits else value
        case FieldType.NUMBER:
            fits = is_number(value)
        case FieldType.STRING:
            fits = isinstance(value, str)
        case FieldType.BOOLEAN:
            fits = isinstance(value, bool)
        case FieldType.OBJECT:
            fits = isinstance(value, dict)
        case FieldType.LIST:
            fits = isinstance(value, list)
        case FieldType.TIMESTAMP:
            fits = isinstance(value, str) and parse_timestamp(value) is not None
    if fits:
        return value, None
    if field_type is FieldType.INTEGER and is_whole(value):
        return None, "must be an integer between -2^53 and 2^53 (send larger ones as strings)"
    got = f"{value!r}" if field_type is FieldType.TIMESTAMP and isinstance(value, str) else ""
    return None, f"must be {_EXPECTED[field_type]}, got {got or json_type_name(value)}"


def resolve_default(default: JSON, now: datetime) -> JSON:
    """A field default as of `now` (an aware datetime): "now" and "today" become UTC strings."""
    if default == NOW:
        return now.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if default == TODAY:
        return now.astimezone(UTC).date().isoformat()
    # The definition's object and list defaults must not be shared with (and mutated by) runs.
    return copy.deepcopy(default)


def validate_payload(
    trigger: Trigger, payload: Mapping[str, JSON], now: datetime
) -> dict[str, JSON]:
    """The payload checked against the trigger's contract, defaults applied, integers normalised.

    A null value of a declared field counts as absent. Raises InvalidArgument listing every
    problem at once.
    """
    result: dict[str, JSON] = {}
    violations: list[FieldViolation] = []
    declared = {f.name for f in trigger.payload}
    for field in trigger.payload:
        value = payload.get(field.name)
        if value is None:
            value = resolve_default(field.default, now)
        if value is None:
            if field.required:
                violations.append(FieldViolation(f"payload.{field.name}", "is required"))
            continue
        normalised, problem = conform_value(field.type, value)
        if problem:
            violations.append(FieldViolation(f"payload.{field.name}", problem))
        else:
            result[field.name] = normalised
    for name in payload:
        if name not in declared:
            violations.append(
                FieldViolation(f"payload.{name}", f"is not a field of trigger '{trigger.name}'")
            )
    if violations:
        count = len(violations)
        raise InvalidArgument(
            f"payload does not match the contract of trigger '{trigger.name}' "
            f"({count} problem{'' if count == 1 else 's'})",
            violations,
        )
    return result


def clock_defaulted(trigger: Trigger, sent: Mapping[str, JSON]) -> frozenset[str]:
    """The fields a payload left to a "now" or "today" default: their value depends on when
    the run starts, so they are no part of what an idempotency key stands for."""
    return frozenset(
        f.name for f in trigger.payload if f.default in (NOW, TODAY) and sent.get(f.name) is None
    )


def payload_hash(payload: Mapping[str, JSON], leave_out: frozenset[str] = frozenset()) -> str:
    """sha256 of the canonical JSON of a payload without the fields `leave_out`, for
    idempotency checks."""
    kept = {k: v for k, v in payload.items() if k not in leave_out}
    canonical = json.dumps(
        _canonical(kept), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _canonical(value: JSON) -> JSON:
    # JSON has one number type: 5 and 5.0 are the same value and must hash the same.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value
