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


def say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


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
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "SQUIDMESH_ADDRESS": ADDRESS, "PYTHONPATH": str(REPO)}
    say(f"starting the server on {ADDRESS} (embedded Postgres and Redis in {DATA_DIR})")
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
        say("starting a worker process for examples/payment.py")
        worker = subprocess.Popen(
            [BIN, "worker", "examples.payment", "--server", ADDRESS],
            env=env,
            cwd=REPO,
            stdout=(logs / "worker.log").open("wb"),
            stderr=subprocess.STDOUT,
            process_group=0,
        )
        wait_until(registered, 60, "the payment workflow to be registered")
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
        print(f"logs: {logs}", flush=True)
    if not clean:
        return status or 1
    if status == 0:
        say("done: the run completed and everything stopped")
    elif status != 130:
        say("the run did not complete; everything stopped")
    return status


if __name__ == "__main__":
    sys.exit(main())
