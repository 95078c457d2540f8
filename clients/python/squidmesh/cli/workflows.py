"""`squidmesh workflows ...`: list, get and register workflow definitions."""

from __future__ import annotations

import argparse

from squidmesh.cli import text, workflow_file
from squidmesh.cli.output import Output
from squidmesh.client import Client


def list_workflows(args: argparse.Namespace, client: Client, out: Output) -> int:
    response = client.list_workflows(page_size=args.page_size, page_token=args.page_token)
    if out.json:
        out.message(response)
        return 0
    out.table(text.workflows_table(response.workflows))
    if response.next_page_token:
        out.note(f"more workflows: --page-token {response.next_page_token}")
    return 0


def get(args: argparse.Namespace, client: Client, out: Output) -> int:
    workflow = client.get_workflow(args.name, args.version)
    if out.json:
        out.message(workflow)
    else:
        for line in text.workflow_text(workflow):
            out.line(line)
    return 0


def register(args: argparse.Namespace, client: Client, out: Output) -> int:
    workflow = client.register_workflow(workflow_file.read(args.file))
    if out.json:
        out.message(workflow)
    else:
        out.line(f"registered {workflow.name} version {workflow.version}")
    return 0
