"""`squidmesh runs explain` and `squidmesh runs history`: why a run is where it is, and who did
what to it."""

from __future__ import annotations

import argparse
from datetime import datetime

from squidmesh.cli import diagnosis_text
from squidmesh.cli.output import Output
from squidmesh.client import Client
from squidmesh.v1 import run_service_pb2


def explain(args: argparse.Namespace, client: Client, out: Output) -> int:
    explained = client.explain_run(args.run_id)
    if out.json:
        out.message(explained)
        return 0
    now = datetime.now().astimezone()
    for line, style in diagnosis_text.explain_lines(args.run_id, explained, now):
        out.line(line, style)
    return 0


def history(args: argparse.Namespace, client: Client, out: Output) -> int:
    if args.all:
        entries = list(client.iter_run_history(args.run_id, page_size=1000))
        page = run_service_pb2.GetRunHistoryResponse(entries=entries)
    else:
        page = client.get_run_history(args.run_id, args.page_size, args.page_token)
    if out.json:
        out.message(page)
        return 0
    out.table(diagnosis_text.history_table(page.entries))
    if page.next_page_token:
        out.note(f"more entries: --page-token {page.next_page_token} (or --all)")
    return 0
