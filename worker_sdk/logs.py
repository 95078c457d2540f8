"""Logging setup for worker processes: structlog, JSON when stdout is not a terminal."""

from __future__ import annotations

import logging
import os
import sys

import structlog

__all__ = ["configure_logging"]


LOG_LEVEL_ENV = "SQUIDMESH_LOG_LEVEL"


def configure_logging(level: str | None = None, *, json: bool | None = None) -> None:
    """Configures structlog (and the standard library's logging, which taskiq, redis and grpc
    use) for a worker process. `level` defaults to $SQUIDMESH_LOG_LEVEL, else INFO; `json` to
    "stdout is not a TTY"."""
    if json is None:
        json = not sys.stdout.isatty()
    level = level or os.environ.get(LOG_LEVEL_ENV) or "INFO"
    level_number = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: list[structlog.typing.Processor] = (
        [structlog.processors.dict_tracebacks, structlog.processors.JSONRenderer()]
        if json
        else [structlog.dev.ConsoleRenderer()]
    )
    structlog.configure(
        processors=[*shared, *renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level_number),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=max(level_number, logging.WARNING), stream=sys.stderr)
    # taskiq logs every message it executes at INFO; the worker logs attempts itself.
    logging.getLogger("taskiq").setLevel(logging.WARNING)
