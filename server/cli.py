"""The `squidmesh` command: serve, migrate, worker, completion, and the client commands of
`squidmesh.cli` (workflows, runs, events, schedules, workers).

At start it imports argparse-level things only: `serve` and `migrate` import the server, and
`worker` the worker SDK, when they run; client commands import neither."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from squidmesh import DEFAULT_ADDRESS
from squidmesh.cli.parser import add_client_commands, server_address

from server.settings import Settings, SettingsError

SIGPIPE_EXIT = 128 + 13  # what a shell reports for a process that SIGPIPE ended


def main(argv: Sequence[str] | None = None) -> int:
    try:
        code = _run(argv)
        sys.stdout.flush()  # here, so that a closed pipe is seen below and not at exit
        return code
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, like other Unix tools. stdout is
        # pointed at /dev/null so that Python's own flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return SIGPIPE_EXIT
    except KeyboardInterrupt:
        return 130


def _run(argv: Sequence[str] | None) -> int:
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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="squidmesh", description="Squid Mesh workflow server")
    parser.add_argument(
        "--version", action=_VersionAction, help="print the version of squidmesh and exit"
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

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
    worker.add_argument(
        "--drain-timeout",
        type=float,
        default=60.0,
        help="seconds to let running attempts finish after SIGTERM (default 60); the server "
        "retries those still running then, once their leases end",
    )
    worker.set_defaults(handler=_worker)

    add_client_commands(commands)

    completion = commands.add_parser(
        "completion",
        help="print a shell completion script",
        description="Print a completion script for SHELL, e.g. "
        "'squidmesh completion bash > ~/.local/share/bash-completion/completions/squidmesh'.",
    )
    completion.add_argument("shell", type=_shell, help="bash, zsh, tcsh, fish or powershell")
    completion.set_defaults(handler=lambda args: _completion(parser, args.shell))
    return parser


class _VersionAction(argparse.Action):
    """--version, read from the package metadata only when asked for (it takes ~0.1 s)."""

    def __init__(self, option_strings: Sequence[str], dest: str, help: str) -> None:
        super().__init__(option_strings, dest, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        from importlib.metadata import version

        print(f"squidmesh {version('squidmesh')}")
        parser.exit()


def _shell(name: str) -> str:
    import shtab

    if name not in shtab.SUPPORTED_SHELLS:
        raise argparse.ArgumentTypeError(
            f"{name!r} is not one of: {', '.join(shtab.SUPPORTED_SHELLS)}"
        )
    return name


def _completion(parser: argparse.ArgumentParser, shell: str) -> int:
    import shtab

    print(shtab.complete(parser, shell=shell))
    return 0


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
        import asyncio

        asyncio.run(coro)


def _serve(args: argparse.Namespace) -> int:
    from server.listen import AddressInUseError, ensure_free

    settings = _settings(args)
    try:
        ensure_free(settings.address)  # before the embedded services take seconds to start
    except AddressInUseError as exc:
        print(f"squidmesh: {exc} (is another server running? see --address)", file=sys.stderr)
        return 1

    import structlog

    from server.app import serve
    from server.logs import configure_logging

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
    from server.listen import ListenError

    return (
        EmbeddedStartError,
        ListenError,
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
        server_address(args),
        found,
        queues=args.queues,
        concurrency=args.concurrency,
        broker_url=args.broker_url,
        drain_timeout=args.drain_timeout,
    ).run_sync()
    return 0


if __name__ == "__main__":
    sys.exit(main())
