"""`make demo`: the embedded server, the payment example's worker, one run streamed to the end,
then everything stopped cleanly. Runs again as often as you like (the data stays in data/demo)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.embedded import stop_orphans

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent / "squidmesh"
ADDRESS = os.environ.get("SQUIDMESH_ADDRESS", "127.0.0.1:50051")
DATA_DIR = REPO / "data" / "demo"
PAYLOAD = {"amount": 1500, "currency": "eur", "customer": "ada@example.com"}
BEGAN = time.monotonic()


def say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def done(what: str, since: float) -> None:
    """One indented line under the step it ends, with how long that step took."""
    print(f"    {what} ({time.monotonic() - since:.1f} s)", flush=True)


def shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def wait_until(check: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise SystemExit(f"demo: timed out waiting for {what}")


def serving() -> bool:
    try:
        with grpc.insecure_channel(ADDRESS) as channel:
            status = (
                health_pb2_grpc.HealthStub(channel)
                .Check(health_pb2.HealthCheckRequest(), timeout=1)
                .status
            )
            return bool(status == health_pb2.HealthCheckResponse.SERVING)
    except grpc.RpcError:
        return False


def registered() -> bool:
    result = subprocess.run(
        [BIN, "workflows", "get", "payment", "--server", ADDRESS], capture_output=True, check=False
    )
    return result.returncode == 0


def stop(proc: subprocess.Popen[bytes], name: str, log: Path) -> bool:
    """SIGTERM, then wait; True when the process stopped by itself with status 0."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            print(f"demo: the {name} did not stop in time; killing it", file=sys.stderr)
            proc.kill()
            proc.wait()
            return False
    if proc.returncode != 0:
        print(f"demo: the {name} exited with status {proc.returncode}; see {log}", file=sys.stderr)
        return False
    return True


def embedded_left() -> list[str]:
    """Embedded Postgres/Redis processes of DATA_DIR still running after the server stopped."""
    left = []
    for proc in psutil.process_iter(["name", "cmdline", "cwd"]):
        if proc.info["name"] not in ("postgres", "redis-server"):
            continue
        cwd = proc.info["cwd"] or ""
        cmdline = " ".join(proc.info["cmdline"] or [])
        if str(DATA_DIR) in cmdline or cwd.startswith(str(DATA_DIR)):
            left.append(f"{proc.pid} {cmdline}")
    return left


def main() -> int:
    if serving():
        raise SystemExit(
            f"demo: something already serves on {ADDRESS}; stop it or set SQUIDMESH_ADDRESS"
        )
    logs = DATA_DIR / "logs"
    first_time = not (DATA_DIR / "postgres").exists()
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "SQUIDMESH_ADDRESS": ADDRESS, "PYTHONPATH": str(REPO)}
    print(
        "Squid Mesh demo: a server with embedded PostgreSQL and Redis, a worker process for\n"
        "examples/payment.py, and one payment run watched until it ends; then everything stops.\n"
        f"Process logs go to {shown(logs)}/.",
        flush=True,
    )
    say(
        f"starting the server on {ADDRESS}, with PostgreSQL and Redis embedded in"
        f" {shown(DATA_DIR)}"
        + (" (the first time, it creates the database: a few seconds)" if first_time else "")
    )
    step = time.monotonic()
    server = subprocess.Popen(
        [BIN, "serve", "--data-dir", str(DATA_DIR)],
        env=env,
        cwd=REPO,
        stdout=(logs / "server.log").open("wb"),
        stderr=subprocess.STDOUT,
        process_group=0,  # Ctrl-C reaches this script only; it stops each process once
    )
    worker = None
    try:
        wait_until(lambda: serving() or server.poll() is not None, 120, "the server")
        if server.poll() is not None:
            print((logs / "server.log").read_text(), file=sys.stderr)
            raise SystemExit("demo: the server exited")
        done("serving", step)
        say("starting a worker process: squidmesh worker examples.payment")
        step = time.monotonic()
        worker = subprocess.Popen(
            [BIN, "worker", "examples.payment", "--server", ADDRESS],
            env=env,
            cwd=REPO,
            stdout=(logs / "worker.log").open("wb"),
            stderr=subprocess.STDOUT,
            process_group=0,
        )
        wait_until(registered, 60, "the payment workflow to be registered")
        done("it registered the workflow `payment`; `squidmesh workflows get payment` shows", step)
        subprocess.run(
            [BIN, "workflows", "get", "payment", "--server", ADDRESS], check=True, process_group=0
        )
        say(f"starting a payment run and watching it: {json.dumps(PAYLOAD)}")
        result = subprocess.run(
            [
                BIN,
                "runs",
                "start",
                "payment",
                "--payload",
                json.dumps(PAYLOAD),
                "--watch",
                "--server",
                ADDRESS,
            ],
            env=env,
            check=False,
            process_group=0,
        )
        say("stopping the worker and the server")
        status = result.returncode
    except KeyboardInterrupt:
        say("interrupted: stopping the worker and the server")
        status = 130
    finally:
        step = time.monotonic()
        clean = True
        if worker is not None:
            clean = stop(worker, "worker", logs / "worker.log") and clean
        clean = stop(server, "server", logs / "server.log") and clean
        if left := embedded_left():
            print(
                "demo: embedded services still running after the server stopped:", file=sys.stderr
            )
            print("\n".join(f"  {line}" for line in left), file=sys.stderr)
            stop_orphans(DATA_DIR)
            clean = False
        done(f"stopped; the logs are in {shown(logs)}/", step)
    if not clean:
        return status or 1
    took = f"{time.monotonic() - BEGAN:.1f} s"
    if status == 0:
        say(f"done in {took}: the run completed and everything stopped")
    elif status != 130:
        say(f"the run did not complete; everything stopped ({took})")
    return status


if __name__ == "__main__":
    sys.exit(main())
