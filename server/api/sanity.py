"""What no request may carry, whatever the RPC: values that Postgres cannot store or that the
contract cannot send back. Checked on every request message before anything else, so each is
refused where it enters, with a field violation, instead of failing deep inside (an INTERNAL,
a batch of other requests failing with it, or a run that can never be dispatched).

- a NUL character in any string or map key (Postgres text and jsonb reject U+0000);
- NaN or Infinity in a `google.protobuf.Value` (JSON has no such numbers);
- an enum value the contract does not define (it would be silently ignored);
- an identifier (a name, id, key, token...) longer than `MAX_IDENTIFIER` characters: they are
  index keys, and Postgres refuses index entries of a few KiB;
- a JSON value (a `Struct`, `Value` or `ListValue`) nested more than `MAX_DEPTH` objects and
  lists deep: protobuf decodes at most 100 message levels, and every answer that carries such
  a value back (a run, a claim's input, a batch of answers) wraps it in a few more, so a deeper
  value would be stored and then break every read of its run, or the stream of its worker;
- a `Timestamp` or `Duration` outside the range its type defines (years 1 to 9999; ±10,000
  years; nanos within a second, of the sign of the seconds): no date type holds it.

Descriptions name the field and the problem, never the value: a request must not be able to
make the error as large as itself.
"""

from __future__ import annotations

import functools
import math
from typing import TypeAlias

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from squidmesh.values import MAX_DEPTH

from server.engine.errors import FieldViolation

MAX_IDENTIFIER = 256
MAX_PROBLEMS = 20
_SHOWN_KEY = 40

IDENTIFIERS = frozenset(
    {
        "name",
        "workflow",
        "trigger",
        "idempotency_key",
        "worker_id",
        "run_id",
        "attempt_id",
        "token",
        "from_step",
        "to",
        "step",
        "handler",
        "queue",
        "queues",
        "handlers",
        "after",
        "compensate",
        "version_label",
        "output_key",
        "keys",
        "actor",
        "page_token",
        "error_type",
        "non_retryable_error_types",
        # Events (a published event's name and key are one btree index entry) and schedules.
        "event",
        "correlation_key",
        "event_id",
        "parent_run_id",
        "parent_step",
        "schedule_id",
    }
)
"""Fields (in any message) that hold identifiers, limited to MAX_IDENTIFIER characters."""

_STRUCT = "google.protobuf.Struct"
_VALUE = "google.protobuf.Value"
_LIST = "google.protobuf.ListValue"
_TIMESTAMP = "google.protobuf.Timestamp"
_DURATION = "google.protobuf.Duration"
_TIMESTAMP_SECONDS = (-62_135_596_800, 253_402_300_799)  # 0001-01-01 to 9999-12-31
_DURATION_SECONDS = 315_576_000_000  # 10,000 years
_NANOS = 999_999_999

# A field path, built only when a problem is found: (parent, segment), where a segment is
# ".name", "[index]" or ".key". Paths are not formatted for the many fields that are fine.
Path: TypeAlias = "tuple[Path, str] | None"


def problems(message: Message, where: str = "") -> list[FieldViolation]:
    """Every problem of the message (the first MAX_PROBLEMS), as field violations whose paths
    start with `where`."""
    found: list[FieldViolation] = []
    _message(message, (None, where) if where else None, found)
    return found[:MAX_PROBLEMS]


def _message(message: Message, path: Path, found: list[FieldViolation], depth: int = 0) -> None:
    """`depth`: how many JSON objects and lists `message` is inside."""
    kind = message.DESCRIPTOR.full_name
    if kind in (_STRUCT, _LIST):
        depth += 1
        if depth > MAX_DEPTH:
            _add(found, path, f"is nested more than {MAX_DEPTH} levels deep")
            return
    if kind == _STRUCT:
        for key, value in message.fields.items():  # type: ignore[attr-defined]
            key_path = (path, _key(key))
            _text(key, key_path, found, what="key")
            _message(value, key_path, found, depth)
        return
    if kind == _VALUE:
        filled = message.WhichOneof("kind")
        if filled == "number_value" and not math.isfinite(message.number_value):  # type: ignore[attr-defined]
            _add(found, path, "must be a finite number (JSON has no NaN or Infinity)")
        elif filled == "string_value":
            _text(message.string_value, path, found)  # type: ignore[attr-defined]
        elif filled == "struct_value":
            _message(message.struct_value, path, found, depth)  # type: ignore[attr-defined]
        elif filled == "list_value":
            _message(message.list_value, path, found, depth)  # type: ignore[attr-defined]
        return
    if kind == _LIST:
        for index, item in enumerate(message.values):  # type: ignore[attr-defined]
            _message(item, (path, f"[{index}]"), found, depth)
        return
    if kind == _TIMESTAMP:
        seconds, nanos = message.seconds, message.nanos  # type: ignore[attr-defined]
        low, high = _TIMESTAMP_SECONDS
        if not (low <= seconds <= high and 0 <= nanos <= _NANOS):
            _add(found, path, "must be a timestamp of the years 1 to 9999")
        return
    if kind == _DURATION:
        seconds, nanos = message.seconds, message.nanos  # type: ignore[attr-defined]
        if abs(seconds) > _DURATION_SECONDS or abs(nanos) > _NANOS or seconds * nanos < 0:
            _add(
                found,
                path,
                "must be a duration of at most 10,000 years (nanos of the seconds' sign)",
            )
        return
    for field, value in message.ListFields():
        if len(found) >= MAX_PROBLEMS:
            return
        field_path = (path, f".{field.name}")
        value_field = _map_value(field)
        if value_field is not None:
            for key, item in value.items():
                item_path = (field_path, f"[{_shown(key) if isinstance(key, str) else key}]")
                if isinstance(key, str):
                    _text(key, item_path, found, what="key")
                _scalar(value_field, item, item_path, found)
        elif field.is_repeated:
            for index, item in enumerate(value):
                _scalar(field, item, (field_path, f"[{index}]"), found)
        else:
            _scalar(field, value, field_path, found)


@functools.cache
def _map_value(field: FieldDescriptor) -> FieldDescriptor | None:
    """The value field of a map field's entries; None for any other field."""
    entry = field.message_type
    if entry is None or not entry.GetOptions().map_entry:
        return None
    value: FieldDescriptor = entry.fields_by_name["value"]
    return value


def _scalar(field: FieldDescriptor, value: object, path: Path, found: list[FieldViolation]) -> None:
    if isinstance(value, Message):
        _message(value, path, found)
    elif isinstance(value, str):
        _text(value, path, found)
        if len(value) > MAX_IDENTIFIER and field.name in IDENTIFIERS:
            _add(found, path, f"must be at most {MAX_IDENTIFIER} characters")
    elif (
        field.type == FieldDescriptor.TYPE_ENUM
        and field.enum_type is not None
        and value not in field.enum_type.values_by_number
    ):
        _add(found, path, f"unknown {field.enum_type.name} value {value}")


def _text(text: str, path: Path, found: list[FieldViolation], what: str = "text") -> None:
    if "\x00" in text:
        _add(found, path, f"{what} contains a NUL character (U+0000), which cannot be stored")


def _add(found: list[FieldViolation], path: Path, problem: str) -> None:
    segments = []
    while path is not None:
        path, segment = path
        segments.append(segment)
    found.append(FieldViolation("".join(reversed(segments)).lstrip("."), problem))


def _key(key: str) -> str:
    return f".{_shown(key)}"


def _shown(key: str) -> str:
    """A map or object key as it appears in a field path: shortened, NULs made visible."""
    key = key.replace("\x00", "\\u0000")
    return key if len(key) <= _SHOWN_KEY else key[:_SHOWN_KEY] + "…"
