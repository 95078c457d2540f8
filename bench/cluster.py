"""What a benchmark measures: the embedded Postgres and Redis (in a data directory of their
own), a fresh database, a server process and worker processes, all stopped (and the database
dropped) at the end. Process logs go to bench/results/."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from server.embedded import EmbeddedServices
from tests.support import (
    ServerProcess,
    WorkerProcess,
    drop_database,
    fresh_database,
    stream_prefix,
)

LOG_DIR = Path(__file__).resolve().parent / "results"


@dataclass
class BenchCluster:
    data_dir: Path
    """Of the embedded Postgres and Redis."""
    redis_url: str
    database_url: str
    server_env: dict[str, str]
    server: ServerProcess
    processes: list[ServerProcess | WorkerProcess] = field(default_factory=list)
    """The server first, then the workers."""

    def start_worker(
        self, module: str, concurrency: int = 4, env: Mapping[str, str] | None = None
    ) -> WorkerProcess:
        worker = WorkerProcess(
            module,
            self.server.address,
            LOG_DIR,
            concurrency=concurrency,
            env={"SQUIDMESH_LOG_LEVEL": "warning", **(env or {})},
        )
        self.processes.append(worker)
        return worker

    def restart_server(self) -> ServerProcess:
        """SIGKILLs the server and starts another on its port, as a supervisor would; returns
        once it serves."""
        old = self.server
        old.kill()
        old.close()
        self.server = ServerProcess(self.server_env, LOG_DIR, port=old.port, wait=False)
        self.processes[self.processes.index(old)] = self.server
        self.server.wait_healthy()
        return self.server


@contextmanager
def bench_cluster(data_dir: Path, **server_env: str) -> Iterator[BenchCluster]:
    """The embedded services in `data_dir` and a server (`server_env` adds to its settings)."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    services = EmbeddedServices(data_dir)
    urls = services.start()
    database_url = ""
    cluster = None
    try:
        database_url = fresh_database(urls.database_url)
        env = {
            "SQUIDMESH_DATABASE_URL": database_url,
            "SQUIDMESH_REDIS_URL": urls.redis_url,
            "SQUIDMESH_STREAM_PREFIX": stream_prefix(),
            "SQUIDMESH_LOG_LEVEL": "warning",
            **server_env,
        }
        server = ServerProcess(env, LOG_DIR)
        cluster = BenchCluster(
            services.data_dir, urls.redis_url, database_url, env, server, [server]
        )
        yield cluster
    finally:
        for p in reversed(cluster.processes if cluster else []):
            p.close()
        if database_url:
            drop_database(urls.database_url, database_url)
        services.stop()
