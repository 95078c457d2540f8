"""The context a handler receives with its input."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

import structlog
from google.protobuf import duration_pb2
from squidmesh.v1 import worker_service_pb2
from squidmesh.values import from_duration

from worker_sdk.children import ChildRun, ChildRuns
from worker_sdk.errors import AttemptCancelledError

__all__ = ["StepContext"]


class StepContext:
    """What a handler knows about the attempt it runs, and how it talks back.

    Safe to use from the thread a sync handler runs in: `heartbeat()` only records progress
    (the worker sends it with its next heartbeat), and `cancel_event` is a `threading.Event`
    that long sync handlers can poll (or `raise_if_cancelled()` between units of work).

    Time limit: `attempt_timeout` is the step's limit per attempt in seconds (None without
    one), counted from the claim. `deadline` is when it passes, as a `time.monotonic()`
    value, and `time_remaining()` the seconds left (never negative), both None without a
    limit: use them to bound external calls. When the deadline passes the worker requests
    cancellation (`cancel_reason` "timed out"). The server's clock is the one that counts:
    it fails the attempt as timed out and refuses a result reported after that.

    Child runs: `await ctx.start_child_run(workflow, payload, key=...)` starts a run of another
    workflow linked to this run and step (`start_child_run_sync` in a sync handler).
    """

    def __init__(
        self,
        *,
        run_id: str,
        workflow: str,
        step: str,
        attempt_id: str,
        attempt_number: int,
        idempotency_key: str,
        handler: str = "",
        heartbeat_timeout: float | None = None,
        attempt_timeout: float | None = None,
        log: Any = None,
        children: ChildRuns | None = None,
    ) -> None:
        self.run_id = run_id
        self.workflow = workflow
        self.step = step
        self.attempt_id = attempt_id
        self.attempt_number = attempt_number
        self.idempotency_key = idempotency_key
        """Stable per step of the run (the same for every attempt): use it for external calls."""
        self.handler = handler
        self.heartbeat_timeout = heartbeat_timeout
        """The lease: the worker heartbeats more often than this (seconds), None if unknown."""
        self.attempt_timeout = attempt_timeout
        """The step's time limit per attempt (seconds, from the claim), None without one."""
        self.deadline: float | None = None
        """`time.monotonic()` when the attempt times out, None without a limit. Counted from
        when the context is made (the claim's answer): a message later than the server's."""
        if attempt_timeout is not None:
            self.deadline = time.monotonic() + attempt_timeout
        self.cancel_event = threading.Event()
        self.log: Any = log if log is not None else structlog.get_logger("squidmesh.step")
        """A structlog logger bound with the run, step and attempt."""
        self.cancel_reason = ""
        self._lock = threading.Lock()
        self._progress: dict[str, Any] | None = None
        self._progress_pending = False
        self._cancel_callbacks: list[Callable[[], object]] = []
        self._children = children

    @classmethod
    def from_decision(
        cls,
        attempt_id: str,
        decision: worker_service_pb2.StartDecision,
        log: Any = None,
        children: ChildRuns | None = None,
    ) -> StepContext:
        return cls(
            run_id=decision.run_id,
            workflow=decision.workflow,
            step=decision.step,
            attempt_id=attempt_id,
            attempt_number=decision.attempt_number,
            idempotency_key=decision.idempotency_key,
            handler=decision.handler,
            heartbeat_timeout=_seconds(decision, "heartbeat_timeout"),
            attempt_timeout=_seconds(decision, "attempt_timeout"),
            log=log,
            children=children,
        )

    def time_remaining(self) -> float | None:
        """Seconds left before the attempt times out (0 once it did), None without a limit."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.monotonic())

    # -- progress ------------------------------------------------------------------------

    def heartbeat(self, details: Mapping[str, Any] | None = None) -> None:
        """Records progress; the worker sends the latest details with its next heartbeat.
        The lease itself is renewed by the worker whatever the handler does."""
        with self._lock:
            self._progress = dict(details) if details is not None else self._progress
            self._progress_pending = True

    def take_progress(self) -> dict[str, Any] | None:
        """The details recorded since the last call (None when nothing new). Worker side."""
        with self._lock:
            if not self._progress_pending:
                return None
            self._progress_pending = False
            return self._progress

    # -- child runs ----------------------------------------------------------------------

    async def start_child_run(
        self,
        workflow: str,
        payload: Mapping[str, Any] | None = None,
        *,
        key: str,
        trigger: str = "",
    ) -> str:
        """Starts a run of `workflow` as a child of this run and step, and returns its run id.
        `key` is unique within this run: another attempt of the step (a retry) that starts a
        child with the same key gets the same child, so derive it from the input, not from the
        attempt. A wait_child step of this run can wait for the child by its key."""
        return await self._child_runs().start(self._child(workflow, payload, key, trigger))

    def start_child_run_sync(
        self,
        workflow: str,
        payload: Mapping[str, Any] | None = None,
        *,
        key: str,
        trigger: str = "",
    ) -> str:
        """`start_child_run` for a sync handler (it runs in a worker thread): blocks until
        the server answered."""
        return self._child_runs().start_blocking(self._child(workflow, payload, key, trigger))

    def _child_runs(self) -> ChildRuns:
        if self._children is None:
            raise RuntimeError(
                "this StepContext has no connection to a server: only the contexts a Worker "
                "gives its handlers can start child runs"
            )
        return self._children

    def _child(
        self, workflow: str, payload: Mapping[str, Any] | None, key: str, trigger: str
    ) -> ChildRun:
        """The child's StartRun, checked before any call."""
        for name, value in (("workflow", workflow), ("key", key)):
            if not isinstance(value, str):
                raise TypeError(f"start_child_run: {name} must be a string")
            if not value:
                raise ValueError(f"start_child_run needs a {name}")
        return ChildRun(self.run_id, self.step, workflow, payload, key, trigger)

    # -- cancellation --------------------------------------------------------------------

    @property
    def cancelled(self) -> bool:
        """True once the attempt was asked to stop (run cancelled, timed out, lease lost)."""
        return self.cancel_event.is_set()

    def raise_if_cancelled(self) -> None:
        """Raises `AttemptCancelledError` once the attempt was asked to stop."""
        if self.cancel_event.is_set():
            raise AttemptCancelledError(f"attempt cancelled: {self.cancel_reason or 'requested'}")

    def request_cancel(self, reason: str) -> None:
        """Asks the handler to stop: sets `cancel_event` and runs the cancel callbacks (the
        worker's: cancel an async handler's task). Idempotent. Call it on the event loop."""
        with self._lock:
            if self.cancel_event.is_set():
                return
            self.cancel_reason = reason
            self.cancel_event.set()
            callbacks, self._cancel_callbacks = self._cancel_callbacks, []
        for callback in callbacks:
            callback()

    def on_cancel(self, callback: Callable[[], object]) -> None:
        """Runs `callback` when cancellation is requested (now, if it already was)."""
        with self._lock:
            if not self.cancel_event.is_set():
                self._cancel_callbacks.append(callback)
                return
        callback()


def _seconds(
    decision: worker_service_pb2.StartDecision,
    field: Literal["heartbeat_timeout", "attempt_timeout"],
) -> float | None:
    """A duration field in seconds; None when unset or zero."""
    if not decision.HasField(field):
        return None
    duration: duration_pb2.Duration = getattr(decision, field)
    return from_duration(duration) or None
