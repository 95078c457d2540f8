"""`squidmesh workers list`: the worker processes the servers know, live ones first."""

from __future__ import annotations

import argparse
from datetime import datetime

from squidmesh.cli import diagnosis_text
from squidmesh.cli.output import Output
from squidmesh.client import Client


def list_workers(args: argparse.Namespace, client: Client, out: Output) -> int:
    response = client.list_workers(args.queue, gone_within=args.gone_within)
    if out.json:
        out.message(response)
        return 0
    out.table(diagnosis_text.workers_table(response.workers, datetime.now().astimezone()))
    return 0
