"""YAML workflow files: 'on' stays a key, true/false stay booleans."""

from __future__ import annotations

import yaml

from server.cli import _YamlLoader


def test_on_is_a_key_and_booleans_are_booleans() -> None:
    data = yaml.load(
        "transitions:\n  - {fromStep: a, on: OUTCOME_ERROR, to: b}\n"
        "payload:\n  - {name: x, required: true, flag: off}\n",
        Loader=_YamlLoader,
    )
    assert data["transitions"][0] == {"fromStep": "a", "on": "OUTCOME_ERROR", "to": "b"}
    assert data["payload"][0] == {"name": "x", "required": True, "flag": "off"}
