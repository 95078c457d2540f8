"""Running totals of the CPU and wall time spent inside a piece of code: what the timer loop
reports about itself (`timer_loop_usage`, a debug line that bench/schedules.py reads).

CPU is the calling thread's (`time.thread_time`, one clock_gettime call at each end): the
event loop's other tasks that ran while the measured code awaited something count too, so a
total is an upper bound of that code's own CPU."""

from __future__ import annotations

import time
from types import TracebackType


class Usage:
    """Adds up each `with usage:` block's thread CPU and wall time (not reentrant)."""

    __slots__ = ("_cpu_at", "_wall_at", "cpu_s", "wall_s")

    def __init__(self) -> None:
        self.cpu_s = 0.0
        self.wall_s = 0.0
        self._cpu_at = 0.0
        self._wall_at = 0.0

    def __enter__(self) -> None:
        self._cpu_at = time.thread_time()
        self._wall_at = time.perf_counter()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.cpu_s += time.thread_time() - self._cpu_at
        self.wall_s += time.perf_counter() - self._wall_at
