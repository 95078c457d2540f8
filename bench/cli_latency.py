"""How long the `squidmesh` client commands take, as a user sees it: `make bench-cli` (or
`python -m bench.cli_latency [--samples 10]`).

Starts the embedded Postgres and Redis (in data/bench), a server process and a worker, runs one
3-step run to its end, then times `squidmesh runs get <run>` (output piped, and on a terminal:
a pseudo-terminal of 120 columns, where rich draws the tables), `runs list` and
`workflows list` as separate processes, wall clock. The commands take turns, one unmeasured
round first, so that a machine whose load drifts slows them alike; the median of each is
printed, next to the start of a bare interpreter. The last line is
`runs_get_s=G runs_get_terminal_s=T runs_list_s=L workflows_list_s=W python_s=P`."""

from __future__ import annotations

import argparse
import fcntl
import os
import pty
import statistics
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

from squidmesh.client import Client

from bench.cluster import bench_cluster
from bench.workflows import noop3

REPO = Path(__file__).resolve().parents[1]
SQUIDMESH = Path(sys.executable).parent / "squidmesh"


def piped(command: list[str]) -> float:
    """Wall-clock seconds of `command`, its output read through a pipe."""
    t0 = time.perf_counter()
    subprocess.run(command, cwd=REPO, capture_output=True, check=True)
    return time.perf_counter() - t0


def on_a_terminal(command: list[str]) -> float:
    """Wall-clock seconds of `command`, its output written to a terminal (a pty)."""
    reader, writer = pty.openpty()
    fcntl.ioctl(writer, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    t0 = time.perf_counter()
    proc = subprocess.Popen(command, cwd=REPO, stdin=subprocess.DEVNULL, stdout=writer)
    os.close(writer)
    try:
        while os.read(reader, 65536):
            pass
    except OSError:  # EIO: the terminal's last writer closed it
        pass
    finally:
        os.close(reader)
    if proc.wait() != 0:
        raise RuntimeError(f"{command} exited with status {proc.returncode}")
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=10, help="timed runs of each command")
    parser.add_argument("--data-dir", type=Path, default=REPO / "data" / "bench")
    args = parser.parse_args()

    with bench_cluster(args.data_dir) as cluster:
        cluster.start_worker("bench.workflows")
        with Client(cluster.server.address) as client:
            client.register_workflow(noop3)
            run = client.wait_for_run(client.start_run(noop3.name, {}).id, timeout=60)

        cli = [str(SQUIDMESH)]
        at = ["--server", cluster.server.address]
        get = [*cli, "runs", "get", run.id, *at]
        commands = {
            "runs_get": ("squidmesh runs get RUN", get, piped),
            "runs_get_terminal": ("  (on a terminal)", get, on_a_terminal),
            "runs_list": ("squidmesh runs list", [*cli, "runs", "list", *at], piped),
            "workflows_list": ("squidmesh workflows list", [*cli, "workflows", "list", *at], piped),
            "python": ("python -c pass", [sys.executable, "-c", "pass"], piped),
        }
        times: dict[str, list[float]] = {key: [] for key in commands}
        for round_ in range(args.samples + 1):
            for key, (_, command, timed) in commands.items():
                seconds = timed(command)
                if round_:  # the first round warms the disk cache
                    times[key].append(seconds)
        for key, (label, _, _) in commands.items():
            t = times[key]
            print(
                f"{label:<26} median {statistics.median(t):.3f} s "
                f"(min {min(t):.3f}, max {max(t):.3f}, {len(t)} runs)"
            )
        print(" ".join(f"{key}_s={statistics.median(t):.3f}" for key, t in times.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
