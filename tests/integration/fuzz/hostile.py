"""Hypothesis strategies for hostile input: odd text, extreme numbers, JSON values that are huge,
deep or not JSON at all, out-of-range durations and timestamps, bad page tokens, undecodable
bytes, and whole request messages built from their descriptors.

A fuzzed request is a valid template with random fields laid over it (`requests`), so that
examples get past the first check (an unknown workflow, a missing id) and reach the deeper ones.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast

from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

M = TypeVar("M", bound=Message)
Strategy = st.SearchStrategy

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)

# Characters that upset text handling: NUL and other controls, RTL and zero-width marks, a
# combining accent, a BOM, non-characters, an emoji sequence, the last code point.
ODD_CHARACTERS = [
    "\x00",
    "\x01",
    "\x7f",
    "\u202e",
    "\u200b",
    "\u0301",
    "\ufeff",
    "\uffff",
    "\ufffe",
    "\U0010ffff",
    "👩‍👩‍👧",
    "مرحبا",
    "Ω≈ç√",
    "'\";--",
    "%s%n{0}",
    "../../",
]

# Protobuf strings cannot hold surrogates: everything else is fair game.
_characters = st.characters(exclude_categories=["Cs"])


def texts() -> Strategy[str]:
    """Short random text, text with odd characters, and strings around and far past the
    identifier limit (256) and up to 300 KB."""
    odd = st.lists(st.one_of(st.sampled_from(ODD_CHARACTERS), st.text(_characters, max_size=3)))
    return st.one_of(
        st.text(_characters, max_size=20),
        odd.map("".join),
        st.sampled_from([255, 256, 257, 1000, 4096, 70_000, 300_000]).map(lambda n: "é" * n),
        st.tuples(st.text(_characters, max_size=5), st.integers(0, 3)).map(
            lambda t: t[0] + "\x00" * t[1]
        ),
    )


def numbers() -> Strategy[float]:
    """Doubles: NaN, infinities, huge and tiny ones, and whole numbers past 2^53."""
    return st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from([2.0**53, 2.0**53 + 2, -(2.0**53) - 2, 2.0**63, 1e308, 5e-324, -0.0]),
        st.integers(-(2**70), 2**70).map(float),
    )


def json_values(max_leaves: int = 12) -> Strategy[Any]:
    """JSON-like Python values (with NaN, infinities and big numbers in them)."""
    leaves = st.one_of(st.none(), st.booleans(), numbers(), texts())
    return st.recursive(
        leaves,
        lambda children: st.one_of(
            st.lists(children, max_size=4), st.dictionaries(texts(), children, max_size=4)
        ),
        max_leaves=max_leaves,
    )


def nested(depth: int, leaf: Any = "x", kind: str = "object") -> Any:
    """A value `depth` objects (or lists) deep."""
    value = leaf
    for _ in range(depth):
        value = {"a": value} if kind == "object" else [value]
    return value


def deep_values() -> Strategy[Any]:
    """Values around the nesting limits: what a request may carry, what the server can send
    back, and what protobuf can still decode (100 message levels)."""
    return st.builds(nested, st.integers(15, 60), st.just("x"), st.sampled_from(["object", "list"]))


def wide_values() -> Strategy[Any]:
    """Large values: many keys or a long list (a few hundred KB), past the payload limit
    (1 MiB), and past gRPC's message limit (4 MiB)."""
    return st.one_of(
        st.sampled_from([1_000, 20_000]).flatmap(
            lambda n: st.sampled_from(
                [{f"k{i}": i for i in range(n)}, list(range(n)), ["é" * 100] * (n // 10)]
            )
        ),
        st.sampled_from([1_500_000, 2_500_000]).map(lambda n: "é" * n),
    )


def payload_values() -> Strategy[Any]:
    return st.one_of(json_values(), deep_values(), wide_values())


def value_message(obj: Any) -> struct_pb2.Value:
    """`obj` as a Value (see `fill_value`)."""
    value = struct_pb2.Value()
    fill_value(value, obj)
    return value


def fill_value(target: struct_pb2.Value, obj: Any) -> None:
    """Sets `target` to `obj` in place: NaN and big numbers stay as they are (the SDK's
    `to_value` refuses them), and deep values never go through a copy (protobuf copies by
    decoding, which fails past 100 levels)."""
    if isinstance(obj, dict):
        target.struct_value.Clear()
        target.struct_value.update(obj)
    elif isinstance(obj, list):
        target.list_value.Clear()
        target.list_value.extend(obj)
    else:
        holder = struct_pb2.Struct()
        holder.update({"v": obj})
        target.CopyFrom(holder.fields["v"])


def durations() -> Strategy[duration_pb2.Duration]:
    """Durations past every column and the type's own range, negative, and with nanos out of
    range or of the wrong sign."""
    seconds = st.one_of(
        st.sampled_from([0, 1, -1, 25 * 86_400, 2**31, 366 * 86_400, 315_576_000_000 + 1]),
        st.sampled_from(INT64),
        st.integers(*INT64),
    )
    nanos = st.one_of(st.sampled_from([0, 999_999_999, 1_000_000_000, -1]), st.integers(*INT32))
    return st.builds(duration_pb2.Duration, seconds=seconds, nanos=nanos)


def timestamps() -> Strategy[timestamp_pb2.Timestamp]:
    """Timestamps at and past the ends of the valid range (years 1 to 9999)."""
    seconds = st.one_of(
        st.sampled_from([0, -62_135_596_800, -62_135_596_801, 253_402_300_799, 253_402_300_800]),
        st.sampled_from(INT64),
        st.integers(*INT64),
    )
    nanos = st.one_of(st.sampled_from([0, 999_999_999, 1_000_000_000, -1]), st.integers(*INT32))
    return st.builds(timestamp_pb2.Timestamp, seconds=seconds, nanos=nanos)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode()


def page_tokens() -> Strategy[str]:
    """Tokens no server returned: random base64, base64 of bytes that are not JSON, of JSON of
    the wrong shape (a list, a number, null, an object with other keys or wrong types)."""
    shapes = st.one_of(
        json_values(6),
        st.fixed_dictionaries({"name": json_values(3)}),
        st.fixed_dictionaries({"t": json_values(3), "id": json_values(3)}),
        st.fixed_dictionaries(
            {"t": st.sampled_from(["2024-01-01T00:00:00+00:00", "yesterday", ""])},
            optional={"id": st.sampled_from([str(uuid.uuid4()), "x", ""])},
        ),
    )
    return st.one_of(
        shapes.map(lambda v: _b64(json.dumps(v).encode())),
        st.binary(max_size=64).map(_b64),
        texts(),
        st.sampled_from(["=", "====", "not base64!", _b64(b"\xff\xfe"), _b64(b"nul\x00")]),
    )


# --- undecodable bytes ---------------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        if not n:
            return bytes(out) + bytes([low])
        out.append(low | 0x80)


def field_bytes(number: int, payload: bytes) -> bytes:
    """One length-delimited field in protobuf wire format."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def deep_value_bytes(depth: int) -> bytes:
    """A Value nested `depth` lists deep, in wire format (protobuf cannot build one past its
    decoding limit)."""
    inner = field_bytes(3, b"x")  # Value.string_value
    for _ in range(depth):
        inner = field_bytes(6, field_bytes(1, inner))  # Value.list_value.values[0]
    return inner


def garbage(valid: bytes = b"") -> Strategy[bytes]:
    """Bytes a protobuf decoder should refuse (or may read as something): random bytes, a
    valid request cut short or with junk after it, a string field with invalid UTF-8, a
    length running past the end, a Value nested past the decoding limit."""
    return st.one_of(
        st.binary(max_size=200),
        st.integers(0, max(len(valid) - 1, 0)).map(lambda n: valid[:n]),
        st.binary(min_size=1, max_size=20).map(lambda junk: valid + junk),
        st.sampled_from(
            [
                field_bytes(1, b"\xff\xfe\xc3"),
                b"\x0a\x7f" + b"ab",
                b"\x0f\x00",  # wire type 7 does not exist
                b"\xff" * 11,  # a varint longer than 10 bytes
                field_bytes(3, deep_value_bytes(120)),
            ]
        ),
    )


# --- whole messages ------------------------------------------------------------------------

_WELL_KNOWN: dict[str, Callable[[], Strategy[Any]]] = {
    "google.protobuf.Struct": lambda: st.dictionaries(texts(), json_values(), max_size=4).map(
        lambda d: value_message(d).struct_value
    ),
    "google.protobuf.Value": lambda: json_values().map(value_message),
    "google.protobuf.Duration": durations,
    "google.protobuf.Timestamp": timestamps,
}


def _ints(low: int, high: int) -> Strategy[int]:
    return st.one_of(st.sampled_from([0, 1, -1, 1000, 1001, low, high]), st.integers(low, high))


def _field(field: FieldDescriptor, known: Mapping[str, Strategy[Any]], depth: int) -> Strategy[Any]:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        key, value = (
            field.message_type.fields_by_name["key"],
            field.message_type.fields_by_name["value"],
        )
        return st.dictionaries(_single(key, known, depth), _single(value, known, depth), max_size=3)
    single = _single(field, known, depth)
    return st.lists(single, max_size=3) if field.is_repeated else single


def _single(
    field: FieldDescriptor, known: Mapping[str, Strategy[Any]], depth: int
) -> Strategy[Any]:
    kind = field.type
    if field.message_type is not None:
        return messages(field.message_type, known, depth + 1)
    if kind == FieldDescriptor.TYPE_STRING:
        return st.one_of(known[field.name], texts()) if field.name in known else texts()
    if kind == FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None
        return st.one_of(st.sampled_from([v.number for v in field.enum_type.values]), _ints(*INT32))
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == FieldDescriptor.TYPE_DOUBLE:
        return numbers()
    if kind == FieldDescriptor.TYPE_INT32:
        return _ints(*INT32)
    if kind == FieldDescriptor.TYPE_INT64:
        return _ints(*INT64)
    raise NotImplementedError(f"no strategy for {field.full_name}")


def messages(
    descriptor: Descriptor, known: Mapping[str, Strategy[Any]] | None = None, depth: int = 0
) -> Strategy[Message]:
    """Messages of a type with any subset of their fields set to hostile values; string fields
    named in `known` also take its values (real ids and names). A message type that contains
    itself (a batch) is nested once at most."""
    if descriptor.full_name in _WELL_KNOWN:
        return _WELL_KNOWN[descriptor.full_name]()
    known = known or {}
    cls = GetMessageClass(descriptor)
    optional = {
        field.name: _field(field, known, depth)
        for field in descriptor.fields
        if not (depth >= 1 and field.message_type is descriptor)
    }
    return st.fixed_dictionaries({}, optional=optional).map(lambda fields: _build(cls, fields))


def _build(cls: type[Message], fields: Mapping[str, Any]) -> Message:
    message = cls()
    for name, value in fields.items():
        target = getattr(message, name)
        if isinstance(value, Message):
            target.MergeFrom(value)
        elif isinstance(value, dict):
            for key, item in value.items():
                if isinstance(item, Message):
                    target[key].MergeFrom(item)
                else:
                    target[key] = item
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, Message):
                    target.add().MergeFrom(item)
                else:
                    target.append(item)
        else:
            setattr(message, name, value)
    return message


def overlay(template: M, patch: Message) -> M:
    """A copy of `template` with the fields set in `patch` laid over it: scalars replaced,
    messages overlaid in turn, items of repeated messages overlaid one by one (extra ones
    appended), map entries replaced."""
    result = type(template)()
    result.CopyFrom(template)
    _overlay(result, patch)
    return result


def _overlay(target: Message, patch: Message) -> None:
    for field, value in patch.ListFields():
        current = getattr(target, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            for key in value:
                if field.message_type.fields_by_name["value"].message_type is not None:
                    current[key].CopyFrom(value[key])
                else:
                    current[key] = value[key]
        elif field.is_repeated and field.message_type is not None:
            for index, item in enumerate(value):
                if index < len(current):
                    _overlay(current[index], item)
                else:
                    current.add().CopyFrom(item)
        elif field.is_repeated:
            current.extend(value)
        elif field.message_type is not None:
            if field.message_type.full_name in _WELL_KNOWN:
                current.CopyFrom(value)
            else:
                _overlay(current, value)
        else:
            setattr(target, field.name, value)


def messages_of(
    cls: type[Message], known: Mapping[str, Strategy[Any]] | None = None
) -> Strategy[Message]:
    """`messages` of a message class."""
    return messages(cast(Descriptor, cls.DESCRIPTOR), known)


def requests(template: M, known: Mapping[str, Strategy[Any]] | None = None) -> Strategy[M]:
    """`template` with hostile fields laid over it."""
    return messages_of(type(template), known).map(lambda patch: overlay(template, patch))
