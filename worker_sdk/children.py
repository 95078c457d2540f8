"""Child runs started by handlers (`StepContext.start_child_run`): the worker's one connection
for them, made when a handler first starts a child, and the bridge that lets sync handlers,
which run in the worker's threads, make the call on the worker's event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from squidmesh.client import AsyncClient
from squidmesh.retries import KEYED_BACKOFF_S

__all__ = ["ChildRun", "ChildRuns"]


@dataclass(frozen=True)
class ChildRun:
    """What a handler asks for: a run of `workflow`, child of the step `parent_step` of
    `parent_run_id`, started with `key` (unique within the parent)."""

    parent_run_id: str
    parent_step: str
    workflow: str
    payload: Mapping[str, Any] | None
    key: str
    trigger: str = ""


class ChildRuns:
    """Starts child runs through a client of the worker's server, created once, on first
    use, on the worker's event loop `loop` (most workers never start a child)."""

    def __init__(
        self,
        server: str,
        *,
        loop: asyncio.AbstractEventLoop,
        token: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.server = server
        self._loop = loop
        self._token = token
        self._timeout = timeout
        self._client: AsyncClient | None = None

    async def start(self, child: ChildRun) -> str:
        """StartRun of the child; its run id. The key is unique
        within the parent: a retried attempt that starts the same child gets the same run,
        and a repeat after UNAVAILABLE is safe (the client retries it)."""
        if self._client is None:
            self._client = AsyncClient(self.server, token=self._token, timeout=self._timeout)
        run = await self._client.start_run(
            child.workflow,
            child.payload,
            trigger=child.trigger,
            idempotency_key=child.key,
            parent_run_id=child.parent_run_id,
            parent_step=child.parent_step,
        )
        return run.id

    def start_blocking(self, child: ChildRun) -> str:
        """`start` for a sync handler: the call runs on the worker's event loop while this
        thread waits. Never on that loop's own thread (it would wait for itself)."""
        if self._loop.is_closed():
            raise RuntimeError("the worker has stopped: no child run can be started")
        if _running_loop() is self._loop:
            raise RuntimeError(
                "start_child_run_sync blocks: an async handler awaits start_child_run instead"
            )
        future = asyncio.run_coroutine_threadsafe(self.start(child), self._loop)
        # Bounded by the client's own attempts, in case the loop stops before answering.
        return future.result(self._timeout * (len(KEYED_BACKOFF_S) + 1) + sum(KEYED_BACKOFF_S))

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:  # a thread without a loop: a sync handler's
        return None
