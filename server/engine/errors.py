"""Domain errors. Each carries a reason; `api/errors.py` maps them to gRPC statuses."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldViolation:
    """One problem with one field of a request, e.g. ("payload.amount", "is required")."""

    field: str
    description: str


class DomainError(Exception):
    """Base of the errors the engine raises on purpose."""

    reason = "ERROR"

    def __init__(self, message: str, *, metadata: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.metadata = metadata or {}


class InvalidArgument(DomainError):
    """The request is malformed; every problem is listed as a field violation."""

    reason = "INVALID_ARGUMENT"

    def __init__(
        self,
        message: str,
        violations: list[FieldViolation] | None = None,
        *,
        reason: str = "INVALID_ARGUMENT",
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, metadata=metadata)
        self.violations = violations or []
        self.reason = reason


class NotFound(DomainError):
    """Something named by the request does not exist."""

    def __init__(self, message: str, *, reason: str, metadata: dict[str, str] | None = None):
        super().__init__(message, metadata=metadata)
        self.reason = reason


def run_not_found(run_id: object) -> NotFound:
    return NotFound(
        f"run '{run_id}' does not exist", reason="RUN_NOT_FOUND", metadata={"run_id": str(run_id)}
    )


class FailedPrecondition(DomainError):
    """The move is illegal in the current state."""

    def __init__(self, message: str, *, reason: str, metadata: dict[str, str] | None = None):
        super().__init__(message, metadata=metadata)
        self.reason = reason


class AlreadyExists(DomainError):
    """An idempotency key was reused with different content."""

    def __init__(self, message: str, *, reason: str, metadata: dict[str, str] | None = None):
        super().__init__(message, metadata=metadata)
        self.reason = reason


class Aborted(DomainError):
    """A concurrent change won: e.g. an update's etag is no longer the resource's."""

    def __init__(self, message: str, *, reason: str, metadata: dict[str, str] | None = None):
        super().__init__(message, metadata=metadata)
        self.reason = reason


class ResourceExhausted(DomainError):
    """A size limit was exceeded."""

    def __init__(self, message: str, *, reason: str, metadata: dict[str, str] | None = None):
        super().__init__(message, metadata=metadata)
        self.reason = reason


class Unavailable(DomainError):
    """A service the server needs (Postgres) cannot be reached now: the call may be retried."""

    reason = "DATABASE_UNAVAILABLE"
