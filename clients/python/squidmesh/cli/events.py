"""`squidmesh events publish`: an event for the wait_event steps waiting for its name and
correlation key."""

from __future__ import annotations

import argparse

from squidmesh.cli.command import json_object
from squidmesh.cli.output import Output
from squidmesh.cli.text import _time
from squidmesh.client import Client


def publish(args: argparse.Namespace, client: Client, out: Output) -> int:
    payload = None if args.payload is None else json_object(args.payload, "--payload")
    response = client.publish_event(
        args.name, args.correlation_key, payload, event_id=args.event_id, actor=args.actor
    )
    if out.json:
        out.message(response)
        return 0
    if response.created:
        out.line(f"event {response.event_id} published", "green")
    else:
        when = _time(response.publish_time)
        out.line(f"event {response.event_id} was already published at {when}: nothing changed")
    resolved = list(response.resolved_run_ids)
    if resolved:
        out.line(f"resolved {len(resolved)} run(s): {', '.join(resolved)}")
    elif response.created:
        out.line("no run was waiting for it; a live run that reaches such a wait later finds it")
    return 0
