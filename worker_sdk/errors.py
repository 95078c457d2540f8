"""Errors a handler raises, and how any exception becomes an `AttemptFailed` report.

- `NonRetryableError`: the step fails now, whatever its retry policy says.
- `RetryableError`: a retryable failure, optionally asking for a specific `retry_after`.
- Any other exception: a retryable failure whose error type is the exception's class name
  (so a retry policy can list it as non-retryable), with a short traceback in the details.
- `AttemptCancelledError` (raised by `StepContext.raise_if_cancelled()`) or the cancellation of
  an async handler: reported with error type "Cancelled"; the server decides what it means.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from squidmesh.v1 import worker_service_pb2
from squidmesh.values import to_duration, to_struct

__all__ = [
    "CANCELLED",
    "OUTPUT_NOT_SERIALIZABLE",
    "AttemptCancelledError",
    "Failure",
    "NonRetryableError",
    "RetryableError",
]

CANCELLED = "Cancelled"
OUTPUT_NOT_SERIALIZABLE = "OutputNotSerializable"
OUTPUT_TOO_LARGE = "OutputTooLarge"
MESSAGE_LIMIT = 16_000
"""How much of an error's message is kept when the whole error is too large to send."""
TRACEBACK_LIMIT = 4000
"""Characters of traceback kept in the details (the innermost frames)."""


class _StepError(Exception):
    def __init__(
        self,
        message: str,
        details: Mapping[str, Any] | None = None,
        *,
        error_type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = dict(details or {})
        self.error_type = error_type or type(self).__name__


class NonRetryableError(_StepError):
    """The step fails without further attempts. `error_type` defaults to the class name."""


class RetryableError(_StepError):
    """A retryable failure; `retry_after` (seconds) asks for a specific delay before the next
    attempt instead of the policy's backoff."""

    def __init__(
        self,
        message: str,
        retry_after: float | None = None,
        details: Mapping[str, Any] | None = None,
        *,
        error_type: str | None = None,
    ) -> None:
        super().__init__(message, details, error_type=error_type)
        if retry_after is not None and retry_after < 0:
            raise ValueError(f"retry_after must be >= 0, got {retry_after}")
        self.retry_after = retry_after


class AttemptCancelledError(Exception):
    """Raised by `StepContext.raise_if_cancelled()` once the server asked the attempt to stop."""

    def __init__(self, message: str = "attempt cancelled") -> None:
        super().__init__(message)


@dataclass(frozen=True)
class Failure:
    """A failed attempt, as reported to the server."""

    error_type: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)
    non_retryable: bool = False
    retry_after: float | None = None

    @classmethod
    def from_exception(cls, exc: BaseException) -> Failure:
        if isinstance(exc, AttemptCancelledError):
            return cls.cancelled(str(exc))
        if isinstance(exc, _StepError):
            return cls(
                error_type=exc.error_type,
                message=exc.message,
                details=_json_safe(exc.details),
                non_retryable=isinstance(exc, NonRetryableError),
                retry_after=exc.retry_after if isinstance(exc, RetryableError) else None,
            )
        return cls(
            error_type=type(exc).__name__,
            message=str(exc) or type(exc).__name__,
            details={"traceback": short_traceback(exc)},
        )

    @classmethod
    def cancelled(cls, message: str = "attempt cancelled") -> Failure:
        return cls(error_type=CANCELLED, message=message)

    @classmethod
    def output_not_serializable(cls, exc: Exception) -> Failure:
        return cls(
            error_type=OUTPUT_NOT_SERIALIZABLE,
            message=f"the handler's output is not JSON: {exc}",
            non_retryable=True,
        )

    @classmethod
    def output_too_large(cls, size: int, limit: int) -> Failure:
        return cls(
            error_type=OUTPUT_TOO_LARGE,
            message=f"the handler's output is {size} bytes, more than the server reads ({limit})",
            non_retryable=True,
        )

    def shortened(self, size: int, limit: int) -> Failure:
        """This failure without its details and with its message cut, for when the whole of it
        (`size` bytes) is more than the server reads (`limit`): the error still counts, retries
        and all. (A character takes at most 4 bytes: a quarter of the limit always fits.)"""
        return replace(
            self,
            message=self.message[: min(MESSAGE_LIMIT, limit // 8)],
            details={"shortened_from_bytes": size},
        )

    def to_proto(self, attempt_id: str, token: str) -> worker_service_pb2.AttemptFailed:
        failed = worker_service_pb2.AttemptFailed(
            attempt_id=attempt_id,
            token=token,
            error_type=self.error_type,
            message=self.message,
            details=to_struct(self.details),
            non_retryable=self.non_retryable,
        )
        if self.retry_after is not None:
            failed.retry_after.CopyFrom(to_duration(self.retry_after))
        return failed


def short_traceback(exc: BaseException) -> str:
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return text if len(text) <= TRACEBACK_LIMIT else "..." + text[-TRACEBACK_LIMIT:]


def _json_safe(details: Mapping[str, Any]) -> dict[str, Any]:
    """Details as JSON; what is not JSON becomes its repr rather than losing the error."""
    try:
        safe: dict[str, Any] = json.loads(json.dumps(details, default=repr))
        to_struct(safe)
    except (TypeError, ValueError):
        return {"repr": repr(details)}
    return safe
