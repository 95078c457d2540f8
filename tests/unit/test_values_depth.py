"""Values nest at most MAX_DEPTH objects and lists deep: deeper ones cannot be carried back by
protobuf (100 message levels), so the SDK refuses them before sending (the fuzz suite found a
deep step output that broke the reads of its run and the stream of its worker)."""

from __future__ import annotations

from typing import Any

import pytest
from squidmesh.values import MAX_DEPTH, to_struct, to_value

from worker_sdk.errors import OUTPUT_NOT_SERIALIZABLE, Failure
from worker_sdk.execution import outcome_from_result


def nested(depth: int, kind: str = "object") -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = {"a": value} if kind == "object" else [value]
    return value


@pytest.mark.parametrize("kind", ["object", "list"])
def test_values_nest_at_most_max_depth_deep(kind: str) -> None:
    to_value(nested(MAX_DEPTH, kind))
    with pytest.raises(ValueError, match=f"nested more than {MAX_DEPTH}"):
        to_value(nested(MAX_DEPTH + 1, kind))
    to_struct({"a": nested(MAX_DEPTH - 1, kind)})  # the struct itself is one level
    with pytest.raises(ValueError, match=f"nested more than {MAX_DEPTH}"):
        to_struct({"a": nested(MAX_DEPTH, kind)})


def test_stored_values_are_sent_back_whatever_their_depth_and_numbers() -> None:
    value = to_value({"big": 10**16, "deep": nested(MAX_DEPTH + 5)}, strict=False)
    assert value.struct_value.fields["big"].number_value == 1e16


def test_a_handler_output_too_deep_fails_its_attempt_for_good() -> None:
    outcome = outcome_from_result(nested(MAX_DEPTH + 1))
    assert isinstance(outcome, Failure)
    assert (outcome.error_type, outcome.non_retryable) == (OUTPUT_NOT_SERIALIZABLE, True)
