"""Process helpers shared by the embedded Postgres and Redis: identity checks, termination,
pid files, short socket directories, log tails."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

MAX_SOCKET_PATH = 107
POLL = 0.01
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


class EmbeddedStartError(RuntimeError):
    """An embedded server failed to start; the message carries the end of its log."""


def process(pid: int, name: str) -> Any:
    """The live, non-zombie process ``pid`` if it is called ``name``, else None."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)  # reap our own exited child (PID 1 / subreaper case)
    try:
        proc = psutil.Process(pid)
        if proc.name() == name and proc.status() != psutil.STATUS_ZOMBIE:
            return proc
    except psutil.Error:
        pass
    return None


def terminate(pid: int, name: str, signals: list[tuple[int, float]]) -> None:
    """Send each signal in turn and wait up to its timeout for the process to exit."""
    for sig, timeout in signals:
        if process(pid, name) is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process(pid, name) is None:
                return
            time.sleep(POLL)


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return None


def short_dir_path(data_dir: Path) -> Path:
    digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"squidmesh-{digest}"


def short_dir(data_dir: Path) -> Path:
    path = short_dir_path(data_dir)
    path.mkdir(mode=0o755, exist_ok=True)
    if path.stat().st_uid != os.geteuid():
        raise EmbeddedStartError(f"{path} belongs to another user; remove it or set TMPDIR")
    return path


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
