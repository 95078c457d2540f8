"""YAML workflow files read as JSON would be: 'on' stays a key, true/false stay booleans,
dates stay strings."""

from __future__ import annotations

import yaml
from squidmesh.cli.workflow_file import YamlLoader


def test_on_is_a_key_and_booleans_are_booleans() -> None:
    data = yaml.load(
        "transitions:\n  - {fromStep: a, on: OUTCOME_ERROR, to: b}\n"
        "payload:\n  - {name: x, required: true, flag: off}\n",
        Loader=YamlLoader,
    )
    assert data["transitions"][0] == {"fromStep": "a", "on": "OUTCOME_ERROR", "to": "b"}
    assert data["payload"][0] == {"name": "x", "required": True, "flag": "off"}


def test_dates_stay_strings() -> None:
    data = yaml.load("defaultValue: 2026-11-21\nat: 2026-11-21T19:06:49Z\n", Loader=YamlLoader)
    assert data == {"defaultValue": "2026-11-21", "at": "2026-11-21T19:06:49Z"}
