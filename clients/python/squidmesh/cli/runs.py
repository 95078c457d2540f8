"""`squidmesh runs ...`: start, get, list, watch, cancel and replay runs."""

from __future__ import annotations

import argparse

from squidmesh.cli import text
from squidmesh.cli.command import json_object
from squidmesh.cli.output import Output
from squidmesh.client import Client, is_terminal
from squidmesh.v1 import run_pb2


def start(args: argparse.Namespace, client: Client, out: Output) -> int:
    payload = json_object(args.payload, "--payload")
    run = client.start_run(
        args.workflow, payload, trigger=args.trigger, idempotency_key=args.idempotency_key
    )
    if out.json:
        # With --watch the run is the first line of the stream, the watch messages follow.
        (out.message_line if args.watch else out.message)(run)
    else:
        out.line(f"run {run.id} started ({run.workflow} v{run.workflow_version})")
    # The whole history (from sequence 0), not a snapshot taken mid-step.
    return _watch(client, out, run.id, 0) if args.watch else 0


def get(args: argparse.Namespace, client: Client, out: Output) -> int:
    run = client.get_run(args.run_id)
    if out.json:
        out.message(run)
        return 0
    for line in text.run_header(run):
        out.line(line)
    if run.steps:
        out.line()
        out.table(text.steps_table(run))
    if run.children:
        out.line()
        out.table(text.children_table(run))
    out.line()
    out.line(text.run_context(run))
    if not is_terminal(run.status) and run.last_sequence:
        # What happened last says why a live run is where it is (e.g. a declined task).
        out.line()
        out.line("recent events")
        for event in _recent_events(client, run):
            out.line(*text.event_line(event))
    return 0


RECENT_EVENTS = 5


def _recent_events(client: Client, run: run_pb2.Run) -> list[run_pb2.RunEvent]:
    """The run's last RECENT_EVENTS events, up to its last sequence as read."""
    events: list[run_pb2.RunEvent] = []
    stream = client.watch_run(run.id, after_sequence=max(0, run.last_sequence - RECENT_EVENTS))
    try:
        for message in stream:
            if message.HasField("event"):
                events.append(message.event)
                if message.event.sequence >= run.last_sequence:
                    break
    finally:
        stream.close()
    return events


def list_runs(args: argparse.Namespace, client: Client, out: Output) -> int:
    response = client.list_runs(
        workflow=args.workflow,
        statuses=args.status,
        trigger=args.trigger,
        page_size=args.page_size,
        page_token=args.page_token,
        created_after=args.created_after,
        created_before=args.created_before,
        view="full" if args.full else "basic",
        parent_run_id=args.parent,
        schedule_id=args.schedule,
    )
    if out.json:
        out.message(response)
        return 0
    out.table(text.runs_table(response.runs))
    if response.next_page_token:
        out.note(f"more runs: --page-token {response.next_page_token}")
    return 0


def watch(args: argparse.Namespace, client: Client, out: Output) -> int:
    return _watch(client, out, args.run_id, args.after)


def _watch(client: Client, out: Output, run_id: str, after: int) -> int:
    """Prints the events after `after` until the run is terminal, then (as text) the run's
    summary. Exit status 0 only when the run completed."""
    for message in client.watch_run(run_id, after_sequence=after):
        if message.HasField("event"):
            if out.json:
                out.message_line(message)
            else:
                out.line(*text.event_line(message.event))
    final = client.get_run(run_id)
    if not out.json:
        out.line(*text.run_summary(final))
    return 0 if final.status == run_pb2.RUN_STATUS_COMPLETED else 1


def cancel(args: argparse.Namespace, client: Client, out: Output) -> int:
    run = client.cancel_run(
        args.run_id, actor=args.actor, reason=args.reason, idempotency_key=args.idempotency_key
    )
    _print_run(run, out)
    return 0


def replay(args: argparse.Namespace, client: Client, out: Output) -> int:
    run = client.replay_run(
        args.run_id,
        allow_irreversible=args.allow_irreversible,
        idempotency_key=args.idempotency_key,
    )
    _print_run(run, out)
    return 0


def _print_run(run: run_pb2.Run, out: Output) -> None:
    if out.json:
        out.message(run)
    else:
        out.line(*text.run_summary(run))
