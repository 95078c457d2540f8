"""How long the `squidmesh` client commands take, as a user sees it: `make bench-cli` (or
`python -m bench.cli_latency [--samples 10]`).

Starts the embedded Postgres and Redis (in data/bench), a server process and a worker, runs one
3-step run to its end, then times `squidmesh runs get <run>`, `runs list` and `workflows list`
as separate processes (wall clock, output piped, one unmeasured run first) and prints the
median of each, next to the start of a bare interpreter. The last line is
`runs_get_s=G runs_list_s=L workflows_list_s=W python_s=P`."""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.cluster import bench_cluster
from bench.workflows import noop3
from worker_sdk import Client

REPO = Path(__file__).resolve().parents[1]
SQUIDMESH = Path(sys.executable).parent / "squidmesh"


def wall_seconds(command: list[str | Path], samples: int) -> list[float]:
    """Wall-clock seconds of each of `samples` runs of `command`, after one unmeasured run."""
    times = []
    for i in range(samples + 1):
        t0 = time.perf_counter()
        subprocess.run(command, cwd=REPO, capture_output=True, check=True)
        if i:
            times.append(time.perf_counter() - t0)
    return times


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=10, help="timed runs of each command")
    parser.add_argument("--data-dir", type=Path, default=REPO / "data" / "bench")
    args = parser.parse_args()

    with bench_cluster(args.data_dir) as cluster:
        cluster.start_worker("bench.workflows")
        server = cluster.server
        with Client(server.address) as client:
            client.register_workflow(noop3)
            run = client.wait_for_run(client.start_run(noop3.name, {}).id, timeout=60)

        at = ["--server", server.address]
        commands: list[tuple[str, str, list[str | Path]]] = [
            ("runs_get", "squidmesh runs get RUN", [SQUIDMESH, "runs", "get", run.id, *at]),
            ("runs_list", "squidmesh runs list", [SQUIDMESH, "runs", "list", *at]),
            ("workflows_list", "squidmesh workflows list", [SQUIDMESH, "workflows", "list", *at]),
            ("python", "python -c pass", [sys.executable, "-c", "pass"]),
        ]
        medians = {}
        for key, label, command in commands:
            times = wall_seconds(command, args.samples)
            medians[key] = statistics.median(times)
            print(
                f"{label:<26} median {medians[key]:.3f} s "
                f"(min {min(times):.3f}, max {max(times):.3f}, {len(times)} runs)",
                flush=True,
            )
        print(" ".join(f"{key}_s={seconds:.3f}" for key, seconds in medians.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
