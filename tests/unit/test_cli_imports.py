"""The `squidmesh` command imports what a command needs and no more: client commands neither the
server nor the worker stack, and --help, --version or completion not even grpc."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support import REPO, free_port

# Runs the CLI, then prints the top-level packages it imported (even when argparse exits).
PROBE = """
import json, sys
from server.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted({name.partition(".")[0] for name in sys.modules})))
print(json.dumps(sorted(name for name in sys.modules if name.startswith("server."))))
"""

WORKER_AND_SERVER_STACK = {"worker_sdk", "taskiq", "taskiq_redis", "redis", "aiohttp"}
WORKER_AND_SERVER_STACK |= {"sqlalchemy", "psycopg", "alembic", "structlog", "pgserver"}


def imported(*args: str) -> tuple[set[str], set[str]]:
    """The top-level packages and the server modules a CLI command imported."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    packages, server_modules = done.stdout.splitlines()[-2:]
    return set(json.loads(packages)), set(json.loads(server_modules))


@pytest.mark.parametrize(
    "command",
    [
        ["runs", "get", "r"],
        ["runs", "list", "--status", "failed", "--created-after", "2026-01-01"],
        ["runs", "watch", "r", "--output", "json"],
        ["workflows", "list"],
        ["runs", "approve", "r", "--actor", "ada", "--payload", "{}"],
        ["runs", "explain", "r"],
        ["runs", "history", "r", "--all"],
        ["events", "publish", "paid", "--key", "order:7", "--id", "e-1"],
        ["workers", "list", "--gone-within", "1h"],
        ["schedules", "list", "--state", "paused"],
        ["schedules", "get", "report/nightly"],
        ["schedules", "preview", "--cron", "0 3 * * *", "--tz", "Europe/Paris"],
        ["schedules", "backfill", "s", "--start", "2026-01-01", "--end", "2026-01-02"],
        ["schedules", "create", "s", "--workflow", "w", "--cron", "@daily", "--overlap", "skip"],
        ["schedules", "trigger", "s", "--watch"],
    ],
)
def test_client_commands_import_neither_server_nor_worker(command: list[str]) -> None:
    packages, server_modules = imported(*command, "--server", f"127.0.0.1:{free_port()}")
    assert "grpc" in packages  # the probe ran the command as far as its call
    assert not packages & WORKER_AND_SERVER_STACK
    assert server_modules == {"server.cli", "server.settings"}


@pytest.mark.parametrize("command", [["--help"], ["--version"], ["completion", "bash"]])
def test_help_version_and_completion_import_no_grpc(command: list[str]) -> None:
    packages, _ = imported(*command)
    assert not packages & ({"grpc", "google", "rich"} | WORKER_AND_SERVER_STACK)
