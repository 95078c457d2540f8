"""Marker files: e2e handlers append one line per invocation to `<marks>/<step>-<run id>`, so
tests can count and order executions across worker processes."""

from __future__ import annotations

from pathlib import Path


def append_mark(directory: str | Path, step: str, run_id: str, line: str) -> None:
    with (Path(directory) / f"{step}-{run_id}").open("a") as f:
        f.write(line + "\n")


def read_marks(directory: Path, step: str, run_id: str) -> list[str]:
    """The lines written for `step` of `run_id`, in order (none if it never ran)."""
    path = directory / f"{step}-{run_id}"
    return path.read_text().splitlines() if path.exists() else []
