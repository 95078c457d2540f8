"""The embedded Postgres (``pgserver``'s binaries): start or reuse, stop, and the chores of
running it as root (see the package docstring)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shlex
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psutil

from server.embedded.processes import (
    MAX_SOCKET_PATH,
    POLL,
    START_TIMEOUT,
    STOP_TIMEOUT,
    EmbeddedStartError,
    log_tail,
    process,
    short_dir,
    terminate,
)

_PG_SOCKET_NAME = ".s.PGSQL.5432"
_PG_SYSTEM_USER = "pgserver"
_perm_lock = threading.Lock()
_perms_done = False


def _pg_bin() -> Path:
    spec = importlib.util.find_spec("pgserver")
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _postmaster(pgdata: Path) -> tuple[int, list[str]] | None:
    """The live postmaster of ``pgdata`` and its ``postmaster.pid`` lines, else None."""
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
    except FileNotFoundError:
        return None
    try:
        pid = int(lines[0])
    except (IndexError, ValueError):
        return None
    proc = process(pid, "postgres")
    if proc is None:
        return None
    try:  # the postmaster runs in its data directory: a reused pid is not mistaken for it
        if Path(proc.cwd()) != pgdata:
            return None
    except psutil.Error:
        return None
    return pid, lines


def _database_url(socket_dir: str) -> str:
    return f"postgresql+psycopg://postgres:@/postgres?host={quote(socket_dir, safe='/')}"


def ensure_postgres(data_dir: Path) -> str:
    pgdata = data_dir / "postgres"
    deadline = time.monotonic() + START_TIMEOUT
    while (found := _postmaster(pgdata)) is not None:
        _, lines = found
        status = lines[7].strip() if len(lines) > 7 else ""
        if status == "ready" and lines[4].strip():
            return _database_url(lines[4].strip())
        if status == "stopping" or time.monotonic() > deadline:
            stop_postgres(data_dir)  # shutting down, or hung: take it down and start afresh
            break
        time.sleep(POLL)
    return _start_postgres(data_dir, pgdata)


def _run_as(user: pwd.struct_passwd | None) -> dict[str, Any]:
    if user is None:
        return {}
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def _start_postgres(data_dir: Path, pgdata: Path) -> str:
    bin_dir = _pg_bin()
    pgdata.mkdir(mode=0o700, exist_ok=True)
    system_user: pwd.struct_passwd | None = None
    if os.geteuid() == 0:  # postgres refuses to run as root
        system_user = _ensure_system_user(_PG_SYSTEM_USER)
        _ensure_pg_permissions(bin_dir, pgdata)
        os.chown(pgdata, system_user.pw_uid, system_user.pw_gid)
    if len(str(pgdata / _PG_SOCKET_NAME)) <= MAX_SOCKET_PATH:
        socket_dir = pgdata
    else:
        socket_dir = short_dir(data_dir) / "pg"
        socket_dir.mkdir(mode=0o700, exist_ok=True)
        if system_user is not None:
            os.chown(socket_dir, system_user.pw_uid, system_user.pw_gid)
    run_as = _run_as(system_user)
    if not (pgdata / "PG_VERSION").exists():
        _pg_command(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(pgdata),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-instructions",
            ],
            run_as,
            pgdata / "log",
        )
    _clear_dead_cluster(pgdata, socket_dir)
    # autovacuum_naptime: the default looks at each database once a minute, while the hot
    # tables (schema.HOT_TABLE) gather their 2,000 dead rows in seconds under load.
    options = f"-c listen_addresses='' -k {shlex.quote(str(socket_dir))} -c autovacuum_naptime=10s"
    log = pgdata / "log"
    cmd = [str(bin_dir / "pg_ctl"), "-D", str(pgdata), "-l", str(log), "-o", options]
    # No "-w": pg_ctl polls readiness every 100 ms; we poll postmaster.pid every 10 ms instead.
    _pg_command([*cmd, "-W", "start"], run_as, log)
    launched = time.monotonic()
    while time.monotonic() - launched < START_TIMEOUT:
        found = _postmaster(pgdata)
        if found is not None:
            lines = found[1]
            if len(lines) > 7 and lines[7].strip() == "ready" and lines[4].strip():
                return _database_url(lines[4].strip())
        elif time.monotonic() - launched > 3.0:  # no live postmaster: it exited at startup
            break
        time.sleep(POLL)
    raise EmbeddedStartError(f"postgres did not start; {log}:\n{log_tail(log)}")


def _cluster_processes(pgdata: Path) -> list[int]:
    """Live postgres processes working in ``pgdata`` (they all run with it as their cwd)."""
    pids = []
    for proc in psutil.process_iter(["name", "status"]):
        if proc.info["name"] == "postgres" and proc.info["status"] != psutil.STATUS_ZOMBIE:
            with contextlib.suppress(psutil.Error):
                if Path(proc.cwd()) == pgdata:
                    pids.append(proc.pid)
    return pids


def _clear_dead_cluster(pgdata: Path, socket_dir: Path) -> None:
    """Before starting: end what a killed postmaster left behind.

    A stale ``postmaster.pid`` or ``.s.PGSQL.5432.lock`` whose pid is an unreaped zombie (or was
    reused by any other process) makes postgres refuse to start ("lock file already exists"), so
    once no process of the old cluster is left, the stale lock files are removed. Backends
    orphaned by a killed postmaster still use the old shared memory: they are stopped first.
    """
    lock = pgdata / "postmaster.pid"
    if not lock.exists():
        return
    socket_dirs = {socket_dir}
    with contextlib.suppress(OSError, IndexError):
        if old := lock.read_text().splitlines()[4].strip():
            socket_dirs.add(Path(old))
    for pid in _cluster_processes(pgdata):
        terminate(pid, "postgres", [(signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0)])
    for directory in socket_dirs:
        (directory / f"{_PG_SOCKET_NAME}.lock").unlink(missing_ok=True)
    lock.unlink(missing_ok=True)


def _ensure_system_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "-s", "/usr/sbin/nologin", name],
            check=True,
            capture_output=True,
            stdin=subprocess.DEVNULL,
        )
        return pwd.getpwnam(name)


def _world_traversable(path: Path) -> None:
    """chmod o+rx,g+rx every parent of ``path`` (what pgserver does as root)."""
    for parent in path.parents:
        mode = parent.stat().st_mode
        if mode & 0o055 != 0o055:
            parent.chmod(mode | 0o055)


def _add_mode_recursive(path: Path, file_bits: int) -> None:
    for root, dirs, files in os.walk(path):
        for name in dirs:
            target = Path(root, name)
            target.chmod(target.stat().st_mode | 0o055)
        for name in files:
            target = Path(root, name)
            mode = target.stat(follow_symlinks=False).st_mode
            if not os.path.islink(target) and mode & file_bits != file_bits:
                target.chmod(mode | file_bits)


def _ensure_pg_permissions(bin_dir: Path, pgdata: Path) -> None:
    """As root: the ``pgserver`` user must reach the binaries and the data directory."""
    global _perms_done
    _world_traversable(pgdata)
    with _perm_lock:
        if not _perms_done:
            install = bin_dir.parent
            _world_traversable(install)
            install.chmod(install.stat().st_mode | 0o055)
            for sub, bits in (("bin", 0o055), ("lib", 0o044), ("share", 0o044)):
                if (install / sub).is_dir():
                    (install / sub).chmod((install / sub).stat().st_mode | 0o055)
                    _add_mode_recursive(install / sub, bits)
            _perms_done = True


def _pg_command(cmd: list[str], run_as: dict[str, Any], log: Path) -> None:
    # Output to a file, not a pipe: a pipe inherited by the postmaster would block pg_ctl.
    with tempfile.TemporaryFile("w+") as out:
        result = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
            **run_as,
        )
        if result.returncode != 0:
            out.seek(0)
            raise EmbeddedStartError(
                f"{Path(cmd[0]).name} failed ({result.returncode}):\n{out.read()}\n"
                f"{log}:\n{log_tail(log)}"
            )


def stop_postgres(data_dir: Path) -> None:
    pgdata = data_dir / "postgres"
    cluster = set(_cluster_processes(pgdata))
    if (found := _postmaster(pgdata)) is not None:
        postmasters = {found[0]}
    else:  # no pid file: the processes whose parent is not one of them
        postmasters = set()
        for pid in cluster:
            with contextlib.suppress(psutil.Error):
                if psutil.Process(pid).ppid() not in cluster:
                    postmasters.add(pid)
    for pid in postmasters:  # fast shutdown, then immediate, then kill
        terminate(
            pid,
            "postgres",
            [(signal.SIGINT, STOP_TIMEOUT), (signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0)],
        )
    for pid in _cluster_processes(pgdata):  # backends orphaned by a killed postmaster
        terminate(pid, "postgres", [(signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0)])
