from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from server.engine.errors import FieldViolation, InvalidArgument
from server.engine.model import JSON, FieldType, PayloadField, Trigger
from server.engine.payload import (
    clock_defaulted,
    conform_value,
    json_type_name,
    parse_timestamp,
    payload_hash,
    validate_payload,
)

NOW = datetime(2024, 3, 9, 23, 30, 15, 250000, tzinfo=timezone(timedelta(hours=-2)))
"""2024-03-10T01:30:15.25Z: the UTC date differs from the local one."""

TRIGGER = Trigger(
    name="manual",
    payload=(
        PayloadField("order_id", FieldType.STRING, required=True),
        PayloadField("amount", FieldType.INTEGER, required=True),
        PayloadField("rate", FieldType.NUMBER),
        PayloadField("express", FieldType.BOOLEAN, default=False),
        PayloadField("meta", FieldType.OBJECT),
        PayloadField("items", FieldType.LIST),
        PayloadField("due", FieldType.TIMESTAMP),
    ),
)


def violations(trigger: Trigger, payload: dict[str, JSON]) -> list[FieldViolation]:
    with pytest.raises(InvalidArgument) as raised:
        validate_payload(trigger, payload, NOW)
    return raised.value.violations


def test_a_valid_payload_is_returned_with_defaults_and_whole_numbers_as_int() -> None:
    payload = {
        "order_id": "o-1",
        "amount": 5.0,
        "rate": 2.0,
        "meta": {"n": 1.0},
        "items": [1, "a"],
        "due": "2024-03-10",
    }
    result = validate_payload(TRIGGER, payload, NOW)
    assert result == {
        "order_id": "o-1",
        "amount": 5,
        "rate": 2.0,
        "express": False,
        "meta": {"n": 1.0},
        "items": [1, "a"],
        "due": "2024-03-10",
    }
    assert type(result["amount"]) is int
    assert payload["amount"] == 5.0, "the input is not mutated"


def test_all_problems_are_reported_at_once() -> None:
    with pytest.raises(InvalidArgument) as raised:
        validate_payload(TRIGGER, {"amount": "5", "express": 1, "colour": "red", "size": 3}, NOW)
    assert raised.value.message == (
        "payload does not match the contract of trigger 'manual' (5 problems)"
    )
    assert raised.value.violations == [
        FieldViolation("payload.order_id", "is required"),
        FieldViolation("payload.amount", "must be an integer, got string"),
        FieldViolation("payload.express", "must be a boolean, got integer"),
        FieldViolation("payload.colour", "is not a field of trigger 'manual'"),
        FieldViolation("payload.size", "is not a field of trigger 'manual'"),
    ]


def test_one_problem_is_singular() -> None:
    with pytest.raises(InvalidArgument) as raised:
        validate_payload(TRIGGER, {"order_id": "o-1"}, NOW)
    assert raised.value.message.endswith("(1 problem)")


@pytest.mark.parametrize(
    ("field_type", "value", "problem"),
    [
        (FieldType.INTEGER, 5.5, "must be an integer, got number"),
        (FieldType.INTEGER, True, "must be an integer, got boolean"),
        (FieldType.NUMBER, False, "must be a number, got boolean"),
        (FieldType.NUMBER, "1", "must be a number, got string"),
        (FieldType.NUMBER, float("nan"), "must be a number, got number"),
        (FieldType.STRING, 3, "must be a string, got integer"),
        (FieldType.BOOLEAN, "true", "must be a boolean, got string"),
        (FieldType.OBJECT, [1], "must be an object, got list"),
        (FieldType.LIST, {"a": 1}, "must be a list, got object"),
        (
            FieldType.TIMESTAMP,
            "yesterday",
            "must be an RFC 3339 timestamp or a date (YYYY-MM-DD), got 'yesterday'",
        ),
        (
            FieldType.TIMESTAMP,
            1710000000,
            "must be an RFC 3339 timestamp or a date (YYYY-MM-DD), got integer",
        ),
    ],
)
def test_wrong_types_are_described(field_type: FieldType, value: JSON, problem: str) -> None:
    trigger = Trigger("t", payload=(PayloadField("f", field_type),))
    assert violations(trigger, {"f": value}) == [FieldViolation("payload.f", problem)]


def test_a_null_value_counts_as_absent() -> None:
    assert violations(TRIGGER, {"order_id": None, "amount": 1}) == [
        FieldViolation("payload.order_id", "is required")
    ]
    result = validate_payload(TRIGGER, {"order_id": "o", "amount": 1, "express": None}, NOW)
    assert result["express"] is False


def test_required_fields_with_a_default_are_satisfied_by_it() -> None:
    trigger = Trigger("t", payload=(PayloadField("n", FieldType.INTEGER, True, default=3.0),))
    assert validate_payload(trigger, {}, NOW) == {"n": 3}


def test_now_and_today_defaults_resolve_in_utc() -> None:
    trigger = Trigger(
        "t",
        payload=(
            PayloadField("at", FieldType.TIMESTAMP, default="now"),
            PayloadField("on", FieldType.TIMESTAMP, default="today"),
        ),
    )
    assert validate_payload(trigger, {}, NOW) == {
        "at": "2024-03-10T01:30:15.250000Z",
        "on": "2024-03-10",
    }
    assert validate_payload(trigger, {"at": "2020-01-01T00:00:00Z"}, NOW)["at"] == (
        "2020-01-01T00:00:00Z"
    )


def test_now_is_only_a_default_not_a_value() -> None:
    trigger = Trigger("t", payload=(PayloadField("at", FieldType.TIMESTAMP),))
    assert [v.field for v in violations(trigger, {"at": "now"})] == ["payload.at"]


def test_defaults_are_copied_not_shared() -> None:
    trigger = Trigger("t", payload=(PayloadField("tags", FieldType.LIST, default=["a"]),))
    first = validate_payload(trigger, {}, NOW)
    first["tags"].append("b")
    assert trigger.payload[0].default == ["a"]
    assert validate_payload(trigger, {}, NOW) == {"tags": ["a"]}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-03-10", datetime(2024, 3, 10, tzinfo=UTC)),
        ("2024-03-10T01:02:03Z", datetime(2024, 3, 10, 1, 2, 3, tzinfo=UTC)),
        ("2024-03-10t01:02:03z", datetime(2024, 3, 10, 1, 2, 3, tzinfo=UTC)),
        ("2024-03-10 01:02:03.5+00:00", datetime(2024, 3, 10, 1, 2, 3, 500000, tzinfo=UTC)),
        (
            "2024-03-10T01:02:03-05:00",
            datetime(2024, 3, 10, 6, 2, 3, tzinfo=UTC),
        ),
    ],
)
def test_parse_timestamp_accepts_rfc3339_and_dates(text: str, expected: datetime) -> None:
    assert parse_timestamp(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "2024-03-10T01:02:03",  # no offset
        "2024-03-10T01:02Z",  # no seconds
        "20240310T010203Z",  # basic format
        "2024-13-01",
        "2024-02-30T00:00:00Z",
        "2024-03-10T25:00:00Z",
        "\uff12\uff10\uff12\uff14-03-10",  # fullwidth digits, which a bare \d would accept
        "",
        "now",
    ],
)
def test_parse_timestamp_rejects_everything_else(text: str) -> None:
    assert parse_timestamp(text) is None


@pytest.mark.parametrize(
    ("value", "name"),
    [
        (None, "null"),
        (True, "boolean"),
        (3, "integer"),
        (3.0, "integer"),
        (3.5, "number"),
        ("x", "string"),
        ({}, "object"),
        ([], "list"),
    ],
)
def test_json_type_name(value: JSON, name: str) -> None:
    assert json_type_name(value) == name


def test_conform_value_normalises_whole_integers_only() -> None:
    assert conform_value(FieldType.INTEGER, 7.0) == (7, None)
    assert conform_value(FieldType.NUMBER, 7.0) == (7.0, None)
    assert conform_value(FieldType.INTEGER, 7.5)[1] == "must be an integer, got number"


def test_clock_defaults_are_left_out_of_the_hash_unless_sent() -> None:
    trigger = Trigger(
        "manual",
        payload=(
            PayloadField("at", FieldType.TIMESTAMP, default="now"),
            PayloadField("day", FieldType.TIMESTAMP, default="today"),
            PayloadField("n", FieldType.INTEGER, default=1),
        ),
    )
    sent: dict[str, JSON] = {"day": "2026-01-02"}
    hashes = set()
    for moment in (datetime(2026, 1, 1, 9, tzinfo=UTC), datetime(2026, 3, 1, 9, tzinfo=UTC)):
        valid = validate_payload(trigger, sent, moment)
        assert clock_defaulted(trigger, sent) == {"at"}
        hashes.add(payload_hash(valid, clock_defaulted(trigger, sent)))
    assert len(hashes) == 1, "a retry later with the same payload must hash the same"
    # Sent explicitly, a time is part of the request.
    at = {"at": "2026-01-01T00:00:00Z"}
    assert clock_defaulted(trigger, at) == {"day"}
    other = {"at": "2026-01-01T00:00:01Z"}
    assert payload_hash(at, clock_defaulted(trigger, at)) != payload_hash(
        other, clock_defaulted(trigger, other)
    )


def test_payload_hash_is_canonical() -> None:
    a = payload_hash({"b": [1, {"y": 2.0, "x": "é"}], "a": 5})
    b = payload_hash({"a": 5.0, "b": [1.0, {"x": "é", "y": 2}]})
    assert a == b
    assert len(a) == 64
    assert payload_hash({"a": 5}) != payload_hash({"a": 6})
    assert payload_hash({"a": True}) != payload_hash({"a": 1})
    assert payload_hash({"a": 1.5}) != payload_hash({"a": 1})
