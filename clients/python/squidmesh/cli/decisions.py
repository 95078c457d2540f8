"""`squidmesh runs resume|approve|reject`: a person's decision on a run stopped at a pause or
approval step. Each prints the run after it (as text, its summary line)."""

from __future__ import annotations

import argparse
from typing import Any

from squidmesh.cli import text
from squidmesh.cli.command import json_object
from squidmesh.cli.output import Output
from squidmesh.client import Client
from squidmesh.v1 import run_pb2


def resume(args: argparse.Namespace, client: Client, out: Output) -> int:
    run = client.resume_run(
        args.run_id,
        step=args.step,
        actor=args.actor,
        comment=args.comment,
        idempotency_key=args.idempotency_key,
    )
    _print_run(run, out)
    return 0


def approve(args: argparse.Namespace, client: Client, out: Output) -> int:
    response = client.approve_step(args.run_id, **_decision(args))
    if out.json:
        out.message(response)
        return 0
    votes = f"{response.approvals} of {response.required_approvals} approvals"
    if response.decided:
        out.line(f"approved ({votes})", "green")
    else:
        missing = response.required_approvals - response.approvals
        out.line(f"approval recorded ({votes}; {missing} more needed)", "green")
    out.line(*text.run_summary(response.run))
    return 0


def reject(args: argparse.Namespace, client: Client, out: Output) -> int:
    run = client.reject_step(args.run_id, **_decision(args))
    _print_run(run, out)
    return 0


def _decision(args: argparse.Namespace) -> dict[str, Any]:
    payload = None if args.payload is None else json_object(args.payload, "--payload")
    return {
        "step": args.step,
        "actor": args.actor,
        "comment": args.comment,
        "payload": payload,
        "idempotency_key": args.idempotency_key,
    }


def _print_run(run: run_pb2.Run, out: Output) -> None:
    if out.json:
        out.message(run)
    else:
        out.line(*text.run_summary(run))
