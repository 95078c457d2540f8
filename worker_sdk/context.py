"""The context a handler receives with its input."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

import structlog
from squidmesh.v1 import worker_service_pb2

from worker_sdk.errors import AttemptCancelledError
from worker_sdk.values import from_duration

__all__ = ["StepContext"]


class StepContext:
    """What a handler knows about the attempt it runs, and how it talks back.

    Safe to use from the thread a sync handler runs in: `heartbeat()` only records progress
    (the worker sends it with its next heartbeat), and `cancel_event` is a `threading.Event`
    that long sync handlers can poll (or `raise_if_cancelled()` between units of work).
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
        log: Any = None,
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
        self.cancel_event = threading.Event()
        self.log: Any = log if log is not None else structlog.get_logger("squidmesh.step")
        """A structlog logger bound with the run, step and attempt."""
        self.cancel_reason = ""
        self._lock = threading.Lock()
        self._progress: dict[str, Any] | None = None
        self._progress_pending = False
        self._cancel_callbacks: list[Callable[[], object]] = []

    @classmethod
    def from_decision(
        cls, attempt_id: str, decision: worker_service_pb2.StartDecision, log: Any = None
    ) -> StepContext:
        return cls(
            run_id=decision.run_id,
            workflow=decision.workflow,
            step=decision.step,
            attempt_id=attempt_id,
            attempt_number=decision.attempt_number,
            idempotency_key=decision.idempotency_key,
            handler=decision.handler,
            heartbeat_timeout=(
                from_duration(decision.heartbeat_timeout) or None
                if decision.HasField("heartbeat_timeout")
                else None
            ),
            log=log,
        )

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

    # -- cancellation --------------------------------------------------------------------

    @property
    def cancelled(self) -> bool:
        """True once the server asked this attempt to stop (run cancelled or lease lost)."""
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
