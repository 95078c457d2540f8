"""Page tokens: only what the server itself encoded is read back; anything else is
INVALID_ARGUMENT (the fuzz suite found tokens of the wrong shape answered INTERNAL)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from server.api.convert import decode_page_token, encode_page_token
from server.engine.errors import InvalidArgument


def token_of(data: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode()


def test_a_token_the_server_made_is_read_back() -> None:
    token = encode_page_token({"t": "2024-01-01T00:00:00+00:00", "id": "x"})
    assert decode_page_token(token, "t", "id") == {"t": "2024-01-01T00:00:00+00:00", "id": "x"}


@pytest.mark.parametrize(
    "token",
    [
        "not base64!",
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
        token_of([1]),
        token_of(5),
        token_of(None),
        token_of({}),
        token_of({"x": "a"}),
        token_of({"name": 5}),
        token_of({"name": None}),
        token_of({"name": "a", "extra": "b"}),
        token_of({"name": "a\x00b"}),
    ],
)
def test_any_other_token_is_invalid_argument(token: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        decode_page_token(token, "name")
    assert [v.field for v in raised.value.violations] == ["page_token"]
