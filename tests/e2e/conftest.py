"""End-to-end fixtures: a server process and worker processes, stopped after each test (their
logs are printed when a test fails)."""

from __future__ import annotations

from collections.abc import Generator, Iterator, Sequence
from pathlib import Path

import grpc
import pytest

from tests.support import SERVE, Process, ServerProcess, WorkerProcess, wait_for
from worker_sdk import Client


class Cluster:
    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.processes: list[Process] = []
        self.server: ServerProcess | None = None

    def start_server(
        self, command: Sequence[str | Path] = SERVE, cwd: Path | None = None, **extra_env: str
    ) -> ServerProcess:
        """A server process; started again, it listens on the same port."""
        port = self.server.port if self.server is not None else None
        self.server = ServerProcess(
            {**self.env, **extra_env}, self.log_dir, port, wait=False, command=command, cwd=cwd
        )
        self.processes.append(self.server)  # stopped and its log shown even if it never serves
        self.server.wait_healthy()
        return self.server

    def start_worker(self, module: str = "tests.e2e.flows", **kwargs: object) -> WorkerProcess:
        assert self.server is not None
        worker = WorkerProcess(module, self.server.address, self.log_dir, **kwargs)  # type: ignore[arg-type]
        self.processes.append(worker)
        return worker

    def start_process(
        self, name: str, args: Sequence[str | Path], env: dict[str, str], cwd: Path | None = None
    ) -> Process:
        """Any other process, stopped (and its log shown) like the servers and workers."""
        process = Process(name, args, env, self.log_dir, cwd)
        self.processes.append(process)
        return process

    def client(self) -> Client:
        assert self.server is not None
        return Client(self.server.address)

    def wait_registered(self, client: Client, workflow: str, version: int = 1) -> None:
        def registered() -> bool:
            try:
                return client.get_workflow(workflow).version >= version
            except grpc.RpcError:
                return False

        wait_for(registered, 30, f"workflow {workflow} v{version} registered", every=0.1)

    def close(self) -> None:
        for p in reversed(self.processes):
            p.close()

    def logs(self) -> str:
        """Each process's exit status and the end of its log (call after close())."""
        parts = []
        for p in self.processes:
            code = p.proc.returncode
            status = "running" if code is None else f"exit status {code}"
            parts.append(f"===== {p.name} ({status}; {p.log_path})\n{p.output()[-6000:]}")
        return "\n".join(parts)


@pytest.fixture
def cluster(
    server_env: dict[str, str], log_dir: Path, request: pytest.FixtureRequest
) -> Iterator[Cluster]:
    c = Cluster(server_env, log_dir)
    try:
        yield c
    finally:
        c.close()  # first, so the logs show how each process stopped
        report = getattr(request.node, "rep_call", None)
        if report is None or report.failed:  # failed, or never got to run (setup error)
            # pytest shows this under "Captured stdout teardown" in the failure's report.
            print(c.logs())


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
    return report
