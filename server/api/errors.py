"""The one table from domain errors to gRPC statuses, with google.rpc ErrorInfo and BadRequest
details. Unknown errors become INTERNAL with the traceback logged, never sent."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any, TypeVar

import grpc
import structlog
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc import aio
from grpc_status import rpc_status

from server.api import sanity
from server.engine.errors import (
    Aborted,
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)

log = structlog.get_logger("squidmesh.api")

DOMAIN = "squidmesh.dev"

_CODES: list[tuple[type[DomainError], int]] = [
    (InvalidArgument, code_pb2.INVALID_ARGUMENT),
    (NotFound, code_pb2.NOT_FOUND),
    (FailedPrecondition, code_pb2.FAILED_PRECONDITION),
    (AlreadyExists, code_pb2.ALREADY_EXISTS),
    (Aborted, code_pb2.ABORTED),
    (ResourceExhausted, code_pb2.RESOURCE_EXHAUSTED),
    (Unavailable, code_pb2.UNAVAILABLE),
]


MAX_MESSAGE = 1024
"""Longest error message, field or metadata value sent: errors quote requests (a name, a key)
and must never grow as large as them."""


def _bounded(text: str, limit: int = MAX_MESSAGE) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def check_request(request: Message) -> None:
    """Refuses a request that carries what no request may (see `sanity`)."""
    found = sanity.problems(request)
    if found:
        count = len(found)
        raise InvalidArgument(
            f"the request has {count} invalid field{'' if count == 1 else 's'}", found
        )


def to_status(error: DomainError) -> grpc.Status:
    code = next((c for kind, c in _CODES if isinstance(error, kind)), code_pb2.INTERNAL)
    details = []
    info = any_pb2.Any()
    metadata = {k: _bounded(v, 256) for k, v in error.metadata.items()}
    info.Pack(error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=metadata))
    details.append(info)
    if isinstance(error, InvalidArgument) and error.violations:
        bad = any_pb2.Any()
        bad.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=_bounded(v.field, 256), description=_bounded(v.description)
                    )
                    for v in error.violations
                ]
            )
        )
        details.append(bad)
    status: grpc.Status = rpc_status.to_status(
        status_pb2.Status(code=code, message=_bounded(error.message), details=details)
    )
    return status


F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def handle_errors(method: F) -> F:
    """Wraps a unary servicer method: domain errors → their status, anything else → INTERNAL."""

    @wraps(method)
    async def wrapper(self: Any, request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        try:
            check_request(request)
            return await method(self, request, context)
        except DomainError as exc:
            await context.abort_with_status(to_status(exc))
        except Exception:
            log.exception("rpc_failed", method=method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")

    return wrapper  # type: ignore[return-value]
