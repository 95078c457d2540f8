"""How the clients repeat calls while the server or its database is unavailable for a moment.

Calls that are safe to repeat as they are (reads, CancelRun; PauseSchedule and ResumeSchedule,
no-ops on a schedule already paused or active; BackfillSchedule, which leaves ticks decided
before as they are, so that a repeat starts no run twice, though its `started` then counts the
runs of the last attempt only) are retried by gRPC itself, from the channel's service config
(`CHANNEL_OPTIONS`). Calls that change something are safe to repeat only with an idempotency
key (StartRun, ReplayRun, ResumeRun, ApproveStep, RejectStep, TriggerSchedule) or an event id
(PublishEvent, which always has one: the client chooses it when the caller does not): the
clients repeat those themselves (`keyed`, `keyed_async`). CreateSchedule, UpdateSchedule and
DeleteSchedule are never repeated: a repeat of one that took effect would fail
(ALREADY_EXISTS, ABORTED on its etag, NOT_FOUND) and hide that it did."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

__all__ = ["CHANNEL_OPTIONS", "KEYED_BACKOFF_S", "keyed", "keyed_async", "status_code"]

_IDEMPOTENT = {
    "squidmesh.v1.WorkflowService": ("RegisterWorkflow", "GetWorkflow", "ListWorkflows"),
    "squidmesh.v1.RunService": (
        "GetRun",
        "ListRuns",
        "WatchRun",
        "CancelRun",
        "ExplainRun",
        "GetRunHistory",
    ),
    "squidmesh.v1.WorkerService": ("ListWorkers",),
    "squidmesh.v1.ScheduleService": (
        "GetSchedule",
        "ListSchedules",
        "PauseSchedule",
        "ResumeSchedule",
        "BackfillSchedule",
        "PreviewSchedule",
    ),
}
CHANNEL_OPTIONS = (
    ("grpc.enable_retries", 1),
    (
        "grpc.service_config",
        json.dumps(
            {
                "methodConfig": [
                    {
                        "name": [
                            {"service": service, "method": method}
                            for service, methods in _IDEMPOTENT.items()
                            for method in methods
                        ],
                        "retryPolicy": {
                            "maxAttempts": 5,
                            "initialBackoff": "0.2s",
                            "maxBackoff": "3s",
                            "backoffMultiplier": 2,
                            "retryableStatusCodes": ["UNAVAILABLE"],
                        },
                    }
                ]
            }
        ),
    ),
)
"""gRPC's own retries, with backoff, of the calls that are safe to repeat as they are."""

KEYED_BACKOFF_S = (0.2, 0.4, 0.8, 1.6)
"""The waits between the attempts of a keyed call, as in CHANNEL_OPTIONS."""

T = TypeVar("T")


def status_code(exc: grpc.RpcError) -> grpc.StatusCode | None:
    """The status of a failed call; asyncio's errors are no `grpc.Call` but have one too."""
    if isinstance(exc, grpc.Call | grpc.aio.AioRpcError):
        return exc.code()
    return None


def _retryable(exc: grpc.RpcError, has_key: bool) -> bool:
    return has_key and status_code(exc) == grpc.StatusCode.UNAVAILABLE


def keyed(call: Callable[[], T], has_key: bool) -> T:
    """Runs a call that changes something; with an idempotency key or event id (`has_key`),
    while UNAVAILABLE, again after each wait of KEYED_BACKOFF_S (with jitter): the key makes a
    repeat safe."""
    for wait_s in KEYED_BACKOFF_S:
        try:
            return call()
        except grpc.RpcError as exc:
            if not _retryable(exc, has_key):
                raise
        time.sleep(wait_s * random.uniform(0.5, 1.0))
    return call()


async def keyed_async(call: Callable[[], Awaitable[T]], has_key: bool) -> T:
    """`keyed` for the AsyncClient."""
    for wait_s in KEYED_BACKOFF_S:
        try:
            return await call()
        except grpc.RpcError as exc:
            if not _retryable(exc, has_key):
                raise
        await asyncio.sleep(wait_s * random.uniform(0.5, 1.0))
    return await call()
