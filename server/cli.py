"""The `squidmesh` command: serve, migrate, worker, and client commands for workflows and runs."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import structlog
import yaml
from google.protobuf import json_format
from google.protobuf.message import Message
from squidmesh import DEFAULT_ADDRESS

from server.settings import Settings, SettingsError

if TYPE_CHECKING:  # imported lazily at run time, like the rest of the client side
    from squidmesh.v1 import run_pb2


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        result: int = args.handler(args)
        return result
    except SettingsError as exc:
        print(f"squidmesh: {exc}", file=sys.stderr)
        return 2
    except grpc.RpcError as exc:
        print(f"squidmesh: {_describe_rpc_error(exc)}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:  # bad files, JSON, YAML or option values
        print(f"squidmesh: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _describe_rpc_error(exc: grpc.RpcError) -> str:
    """The status, message, reason and field violations of a failed call."""
    if not isinstance(exc, grpc.Call):
        return str(exc)
    text = f"{exc.code().name}: {exc.details()}"
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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="squidmesh", description="Squid Mesh workflow server")
    commands = parser.add_subparsers(title="commands")

    serve = commands.add_parser(
        "serve",
        help="run the server (embedded Postgres and Redis "
        "unless SQUIDMESH_DATABASE_URL and SQUIDMESH_REDIS_URL are set)",
    )
    serve.add_argument("--address", help=f"listen address (default {DEFAULT_ADDRESS})")
    serve.add_argument("--data-dir", type=Path, help="data directory of the embedded services")
    serve.set_defaults(handler=_serve)

    migrate = commands.add_parser("migrate", help="migrate the database to the latest schema")
    migrate.add_argument("--data-dir", type=Path, help="data directory of the embedded services")
    migrate.set_defaults(handler=_migrate)

    worker = commands.add_parser("worker", help="run the handlers of a Python module")
    worker.add_argument("module", help="module defining Workflow objects, e.g. examples.payment")
    worker.add_argument("--server", help="server address (default $SQUIDMESH_ADDRESS)")
    worker.add_argument("--concurrency", type=int, default=10)
    worker.add_argument(
        "--queue",
        action="append",
        dest="queues",
        help="queue to serve (repeatable; default: every queue the module's steps use)",
    )
    worker.add_argument("--broker-url", help="override the broker URL the server hands out")
    worker.set_defaults(handler=_worker)

    workflows = commands.add_parser("workflows", help="workflow definitions").add_subparsers()
    p = _client_command(workflows, "list", _workflows_list, "list workflows")
    p = _client_command(workflows, "get", _workflows_get, "show a workflow")
    p.add_argument("name")
    p.add_argument("--version", type=int, default=0)
    p = _client_command(
        workflows, "register", _workflows_register, "register a workflow from a YAML or JSON file"
    )
    p.add_argument("file", type=Path)

    runs = commands.add_parser("runs", help="runs").add_subparsers()
    p = _client_command(runs, "start", _runs_start, "start a run")
    p.add_argument("workflow")
    p.add_argument("--payload", default="{}", help="JSON object")
    p.add_argument("--trigger", default="")
    p.add_argument("--idempotency-key", default="")
    p.add_argument("--watch", action="store_true", help="stream progress until the run ends")
    p = _client_command(runs, "get", _runs_get, "show a run")
    p.add_argument("run_id")
    p = _client_command(runs, "list", _runs_list, "list runs, newest first")
    p.add_argument("--workflow", default="")
    p.add_argument("--status", action="append", default=[], help="repeatable")
    p.add_argument("--trigger", default="")
    p.add_argument("--page-size", type=int, default=20)
    p.add_argument("--page-token", default="")
    p = _client_command(runs, "watch", _runs_watch, "stream a run's events until it ends")
    p.add_argument("run_id")
    p.add_argument("--after", type=int, default=None, help="resume after this sequence number")
    p = _client_command(runs, "cancel", _runs_cancel, "cancel a run")
    p.add_argument("run_id")
    p.add_argument("--reason", default="")
    p.add_argument("--actor", default=os.environ.get("USER", "cli"))
    p.add_argument("--idempotency-key", default="", help="repeating it is a no-op")
    p = _client_command(runs, "replay", _runs_replay, "start a new run from a run's payload")
    p.add_argument("run_id")
    p.add_argument("--allow-irreversible", action="store_true")
    p.add_argument("--idempotency-key", default="", help="the same key returns the same replay")
    return parser


def _client_command(
    group: Any, name: str, handler: Callable[[argparse.Namespace], int], help: str
) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = group.add_parser(name, help=help)
    p.add_argument(
        "--server", help=f"server address (default $SQUIDMESH_ADDRESS or {DEFAULT_ADDRESS})"
    )
    p.add_argument("--json", action="store_true", help="print protobuf JSON")
    p.set_defaults(handler=handler)
    return p


# --- server commands ---------------------------------------------------------------------------


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    if getattr(args, "address", None):
        overrides["address"] = args.address
    if getattr(args, "data_dir", None):
        overrides["data_dir"] = args.data_dir
    return Settings.from_env(**overrides)


def _run_async(coro: Any) -> None:
    try:
        import uvloop

        uvloop.run(coro)
    except ImportError:
        asyncio.run(coro)


def _serve(args: argparse.Namespace) -> int:
    from server.app import serve
    from server.logs import configure_logging

    settings = _settings(args)
    configure_logging(settings.log_level)
    try:
        _run_async(serve(settings))
    except _startup_errors() as exc:  # unreachable or failing services: one line, no traceback
        structlog.get_logger("squidmesh.server").error(
            "server_failed", error=f"{type(exc).__name__}: {exc}".strip()
        )
        return 1
    return 0


def _startup_errors() -> tuple[type[BaseException], ...]:
    import psycopg
    import redis.exceptions
    import sqlalchemy.exc

    from server.embedded import EmbeddedStartError

    return (
        EmbeddedStartError,
        sqlalchemy.exc.OperationalError,
        psycopg.OperationalError,
        redis.exceptions.ConnectionError,
    )


def _migrate(args: argparse.Namespace) -> int:
    from server.embedded import EmbeddedServices
    from server.store.migrate import upgrade

    settings = _settings(args)
    if settings.database_url:
        upgrade(settings.database_url)
    else:
        with EmbeddedServices(settings.data_dir) as services:
            upgrade(services.start().database_url)
    print("database is at the latest schema")
    return 0


def _worker(args: argparse.Namespace) -> int:
    from worker_sdk import Worker, Workflow, configure_logging

    # Before the module and the Worker exist: loggers bound earlier would keep structlog's
    # default console format, and the log would mix it with the JSON lines of later ones.
    configure_logging()
    sys.path.insert(0, os.getcwd())
    module = importlib.import_module(args.module)
    found = [v for v in vars(module).values() if isinstance(v, Workflow)]
    if not found:
        print(f"squidmesh: module {args.module} defines no Workflow", file=sys.stderr)
        return 2
    Worker(
        _address(args),
        found,
        queues=args.queues,
        concurrency=args.concurrency,
        broker_url=args.broker_url,
    ).run_sync()
    return 0


# --- client commands ---------------------------------------------------------------------------


def _address(args: argparse.Namespace) -> str:
    return args.server or os.environ.get("SQUIDMESH_ADDRESS") or DEFAULT_ADDRESS


def _client(args: argparse.Namespace) -> Any:
    from worker_sdk import Client

    return Client(_address(args))


def _print_json(message: Message) -> None:
    print(json_format.MessageToJson(message, indent=2))


def _workflows_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        response = client.list_workflows(page_size=1000)
    if args.json:
        _print_json(response)
        return 0
    for wf in response.workflows:
        steps = len(wf.definition.steps)
        print(f"{wf.name:<30} v{wf.version:<4} {steps} steps  {wf.definition.description}")
    return 0


def _workflows_get(args: argparse.Namespace) -> int:
    with _client(args) as client:
        wf = client.get_workflow(args.name, args.version)
    if args.json:
        _print_json(wf)
        return 0
    from server.cli_format import format_workflow

    print(format_workflow(wf))
    return 0


def _workflows_register(args: argparse.Namespace) -> int:
    from squidmesh.v1 import workflow_pb2

    data = yaml.load(args.file.read_text(), Loader=_YamlLoader)
    try:
        definition = json_format.ParseDict(data, workflow_pb2.WorkflowDefinition())
    except json_format.ParseError as exc:
        raise ValueError(f"{args.file} is not a workflow definition: {exc}") from None
    with _client(args) as client:
        wf = client.register_workflow(definition)
    if args.json:
        _print_json(wf)
    else:
        print(f"registered {wf.name} version {wf.version}")
    return 0


class _YamlLoader(yaml.SafeLoader):
    """YAML without the 1.1 booleans on/off/yes/no: `on: error` in a transition stays a key."""


_YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _runs_start(args: argparse.Namespace) -> int:
    try:
        payload = json.loads(args.payload)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--payload is not JSON: {exc}") from None
    with _client(args) as client:
        run = client.start_run(
            args.workflow, payload, trigger=args.trigger, idempotency_key=args.idempotency_key
        )
        if args.json and not args.watch:
            _print_json(run)
            return 0
        print(f"run {run.id} started ({run.workflow} v{run.workflow_version})")
        if args.watch:  # the whole history (from sequence 0), not a snapshot taken mid-step
            return _watch(client, run.id, 0, args.json)
    return 0


def _runs_get(args: argparse.Namespace) -> int:
    from server.cli_format import format_run

    with _client(args) as client:
        run = client.get_run(args.run_id)
    if args.json:
        _print_json(run)
    else:
        print(format_run(run))
    return 0


def _runs_list(args: argparse.Namespace) -> int:
    from server.cli_format import format_run_line

    with _client(args) as client:
        response = client.list_runs(
            workflow=args.workflow,
            statuses=args.status,
            trigger=args.trigger,
            page_size=args.page_size,
            page_token=args.page_token,
        )
    if args.json:
        _print_json(response)
        return 0
    for run in response.runs:
        print(format_run_line(run))
    if response.next_page_token:
        print(f"next page: --page-token {response.next_page_token}")
    return 0


def _runs_watch(args: argparse.Namespace) -> int:
    with _client(args) as client:
        return _watch(client, args.run_id, args.after, args.json)


def _watch(client: Any, run_id: str, after: int | None, as_json: bool) -> int:
    from server.cli_format import format_event, format_run_line

    final = None
    for message in client.watch_run(run_id, after_sequence=after):
        if as_json:
            print(json_format.MessageToJson(message, indent=None))
            continue
        kind = message.WhichOneof("message")
        if kind == "snapshot":
            print(format_run_line(message.snapshot))
        elif kind == "event":
            print(format_event(message.event))
    final = client.get_run(run_id)
    if not as_json:
        print(format_run_line(final))
    from squidmesh.v1 import run_pb2

    return 0 if final.status == run_pb2.RUN_STATUS_COMPLETED else 1


def _runs_cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        run = client.cancel_run(
            args.run_id,
            actor=args.actor,
            reason=args.reason,
            idempotency_key=args.idempotency_key,
        )
    _print_run_line(run, args.json)
    return 0


def _runs_replay(args: argparse.Namespace) -> int:
    with _client(args) as client:
        run = client.replay_run(
            args.run_id,
            allow_irreversible=args.allow_irreversible,
            idempotency_key=args.idempotency_key,
        )
    _print_run_line(run, args.json)
    return 0


def _print_run_line(run: run_pb2.Run, as_json: bool) -> None:
    from server.cli_format import format_run_line

    if as_json:
        _print_json(run)
    else:
        print(format_run_line(run))


if __name__ == "__main__":
    sys.exit(main())
