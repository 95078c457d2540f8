"""Running one client command: its client and output, and its errors as one line on stderr
(exit status 1 for a refused or failed call, 2 for bad input)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

import grpc

from squidmesh.cli.output import Output
from squidmesh.cli.parser import server_address
from squidmesh.client import Client
from squidmesh.values import to_struct

Handler = Callable[[argparse.Namespace, Client, Output], int]


class InputError(Exception):
    """Bad input on the command line or in a file, found before any call."""


def json_object(raw: str, option: str) -> dict[str, Any]:
    """The JSON object given to `option` (e.g. --payload), its values fit for the contract."""
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InputError(f"{option} is not JSON: {exc}") from None
    try:
        to_struct(data, where=option)
    except (TypeError, ValueError) as exc:
        raise InputError(str(exc)) from None
    result: dict[str, Any] = data
    return result


def run(handler: Handler, args: argparse.Namespace) -> int:
    address = server_address(args)
    try:
        with Client(address) as client:
            return handler(args, client, Output(args.output))
    except InputError as exc:
        print(f"squidmesh: {exc}", file=sys.stderr)
        return 2
    except grpc.RpcError as exc:
        print(f"squidmesh: {describe_rpc_error(exc, address)}", file=sys.stderr)
        return 1


def describe_rpc_error(exc: grpc.RpcError, address: str) -> str:
    """The status, message, reason and field violations (one line each) of a failed call."""
    if not isinstance(exc, grpc.Call):
        return str(exc)
    code = exc.code()
    if code == grpc.StatusCode.UNAVAILABLE:
        return f"UNAVAILABLE: cannot reach the server at {address}: {exc.details()}"
    text = f"{code.name}: {exc.details()}"
    from google.rpc import error_details_pb2, status_pb2

    raw = dict(exc.trailing_metadata() or ()).get("grpc-status-details-bin")
    if isinstance(raw, bytes):
        for detail in status_pb2.Status.FromString(raw).details:
            info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
            if detail.Unpack(info):
                text += f" [{info.reason}]"
            elif detail.Unpack(bad):
                text += "".join(f"\n  {v.field}: {v.description}" for v in bad.field_violations)
    return text
