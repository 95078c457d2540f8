"""The faults the chaos benchmark injects into a running `BenchCluster`, each as a supervisor or
an operator would meet it: a worker SIGKILLed (and a new one started), the server SIGKILLed
and started again, Redis flushed or SIGKILLed and restarted empty, Postgres stopped at once
(immediate shutdown: no checkpoint, crash recovery at the next start) and started again.

Before each fault, `stranded` names the work it will strand, so that the audit can tell when
that work ran again: the attempts running on the worker about to be killed, or the step tasks
waiting in Redis (published, not claimed) about to be wiped."""

from __future__ import annotations

import enum
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import redis

from bench.cluster import BenchCluster
from server.embedded.processes import read_pid, terminate
from server.embedded.redis_server import ensure_redis
from server.store.db import libpq_url
from tests.support import REPO, WorkerProcess


class Fault(enum.Enum):
    WORKER_KILL = "worker_kill"
    REDIS_FLUSH = "redis_flush"
    SERVER_KILL = "server_kill"
    POSTGRES_RESTART = "postgres_restart"
    REDIS_RESTART_EMPTY = "redis_restart_empty"


SCHEDULE = (
    Fault.WORKER_KILL,
    Fault.REDIS_FLUSH,
    Fault.SERVER_KILL,
    Fault.POSTGRES_RESTART,
    Fault.REDIS_RESTART_EMPTY,
)
"""The order faults come in by default, round and round."""


@dataclass
class Injected:
    fault: Fault
    at: float
    """Epoch seconds when the fault hit (the clock Postgres stamps attempts with)."""
    took_s: float = 0.0
    """How long injecting it took (a restart included)."""
    stranded: list[uuid.UUID] = field(default_factory=list)
    """The attempts it left with no one to run them."""


class Injector:
    def __init__(self, cluster: BenchCluster, start_worker: Callable[[], WorkerProcess]) -> None:
        self._cluster = cluster
        self._start_worker = start_worker
        self._random = random.Random(7)

    def inject(self, fault: Fault) -> Injected:
        victim = self._victim() if fault is Fault.WORKER_KILL else None
        stranded = self._stranded(fault, victim)
        injected = Injected(fault, time.time(), stranded=stranded)
        if victim is not None:
            victim.kill()
            self._start_worker()  # its replacement, as a supervisor would start
        elif fault is Fault.SERVER_KILL:
            self._cluster.restart_server()
        elif fault is Fault.REDIS_FLUSH:
            with redis.Redis.from_url(self._cluster.redis_url) as client:
                client.flushall()
        elif fault is Fault.REDIS_RESTART_EMPTY:
            _restart_redis_empty(self._cluster.data_dir)
        elif fault is Fault.POSTGRES_RESTART:
            _restart_postgres(self._cluster.data_dir)
        injected.took_s = time.time() - injected.at
        return injected

    def _victim(self) -> WorkerProcess:
        live = [
            p
            for p in self._cluster.processes
            if isinstance(p, WorkerProcess) and p.proc.poll() is None
        ]
        return self._random.choice(live)

    def _stranded(self, fault: Fault, victim: WorkerProcess | None) -> list[uuid.UUID]:
        if victim is not None:  # worker ids are <host>-<pid>-<4 hex digits>
            where = "status = 'running' AND worker_id LIKE %s"
            params: tuple[object, ...] = (f"%-{victim.proc.pid}-%",)
        elif fault in (Fault.REDIS_FLUSH, Fault.REDIS_RESTART_EMPTY):
            where = (
                "status = 'scheduled' AND kind = 'task' AND kicked_at IS NOT NULL "
                "AND due_at <= now()"
            )
            params = ()
        else:
            return []
        with psycopg.connect(libpq_url(self._cluster.database_url)) as conn:
            rows = conn.execute(f"SELECT id FROM attempts WHERE {where}", params).fetchall()
        return [row[0] for row in rows]


def _restart_redis_empty(data_dir: Path) -> None:
    """SIGKILL, remove the append-only file, start again: an empty Redis at the same socket."""
    redis_dir = data_dir / "redis"
    pid = read_pid(redis_dir / "redis.pid")
    if pid is not None:
        terminate(pid, "redis-server", [(signal.SIGKILL, 10.0)])
    for path in redis_dir.glob("appendonly*"):
        path.unlink()
    ensure_redis(data_dir)


def _restart_postgres(data_dir: Path) -> None:
    """Immediate shutdown (SIGQUIT: what `pg_ctl stop -m immediate` sends), then a start,
    which recovers from the WAL."""
    pid = read_pid(data_dir / "postgres" / "postmaster.pid")
    if pid is not None:
        terminate(pid, "postgres", [(signal.SIGQUIT, 10.0), (signal.SIGKILL, 5.0)])
    # In an interpreter of its own: as root, pg_ctl runs as another user, so it is started with
    # fork(), not vfork(), and gRPC's fork handlers in this process (its calls in flight) made
    # it die of SIGSEGV now and then.
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from server.embedded.postgres import "
            "ensure_postgres; ensure_postgres(Path(sys.argv[1]))",
            str(data_dir),
        ],
        cwd=REPO,
        check=True,
        stdin=subprocess.DEVNULL,
    )
