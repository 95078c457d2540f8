"""A workflow definition file: a `WorkflowDefinition` in protobuf JSON form, written as YAML or
JSON, read and checked before any call. Every problem is an `InputError` with one line that
says what is wrong and where."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from google.protobuf import json_format

from squidmesh.cli.command import InputError
from squidmesh.v1 import workflow_pb2
from squidmesh.values import to_struct


def read(path: Path) -> workflow_pb2.WorkflowDefinition:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise InputError(f"{path} is not a UTF-8 text file") from None
    try:
        data = yaml.load(text, Loader=YamlLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise InputError(f"{path} is not valid YAML or JSON: {exc.problem}{where}") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{path} is not valid YAML or JSON: {_one_line(exc)}") from None
    try:
        to_struct(data, where=str(path))  # a mapping of JSON values, as ParseDict expects
    except (TypeError, ValueError) as exc:
        raise InputError(str(exc)) from None
    try:
        return json_format.ParseDict(data, workflow_pb2.WorkflowDefinition())
    except json_format.ParseError as exc:
        raise InputError(f"{path} is not a workflow definition: {_one_line(exc)}") from None


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


class YamlLoader(yaml.SafeLoader):
    """YAML read as JSON would be: no 1.1 booleans on/off/yes/no (`on: OUTCOME_ERROR` in a
    transition stays a key) and no timestamps (`defaultValue: 2026-11-21` stays a string)."""


_IMPLICIT_DROPPED = {"tag:yaml.org,2002:bool", "tag:yaml.org,2002:timestamp"}
YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in _IMPLICIT_DROPPED]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
