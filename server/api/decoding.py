"""Requests whose bytes do not decode (corrupt wire format, bad UTF-8 in a string, nesting past
protobuf's limit of 100 levels) are refused with INVALID_ARGUMENT, as any other bad input,
instead of gRPC's default UNKNOWN (which also quoted the decoder's error).

On the attempt stream such a message is not a reason to end the stream: what can be read of
it (its request_id, and the requests of a batch that decode on their own) is answered like a
request without content, so the worker drops it instead of sending it again forever.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc import aio
from squidmesh.v1 import worker_service_pb2 as wpb

from server.api.errors import to_status
from server.engine.errors import InvalidArgument

_PREFIX = "/squidmesh.v1."
_ATTEMPT_STREAM = "/squidmesh.v1.WorkerService/StreamAttempts"


class Undecodable:
    """Stands for a request that could not be decoded."""


class DecodeErrors(aio.ServerInterceptor):
    """Decodes the requests of the squidmesh services leniently (see the module)."""

    def __init__(self) -> None:
        self._handlers: dict[str, Any] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(_PREFIX):
            return handler
        if method not in self._handlers:  # a method's handler is the same at every call
            self._handlers[method] = _lenient_handler(method, handler)
        return self._handlers[method]


def _lenient_handler(method: str, handler: Any) -> Any:
    decode = handler.request_deserializer
    serialize = handler.response_serializer
    if method == _ATTEMPT_STREAM:
        return grpc.stream_stream_rpc_method_handler(
            handler.stream_stream,
            request_deserializer=lambda data: _attempt_request(decode, data),
            response_serializer=serialize,
        )
    if handler.request_streaming:  # no other method streams its requests
        raise NotImplementedError(method)

    def lenient(data: bytes) -> Any:
        try:
            return decode(data)
        except DecodeError:
            return Undecodable()

    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(
            _refusing_stream(handler.unary_stream),
            request_deserializer=lenient,
            response_serializer=serialize,
        )
    return grpc.unary_unary_rpc_method_handler(
        _refusing_unary(handler.unary_unary),
        request_deserializer=lenient,
        response_serializer=serialize,
    )


def _refused() -> grpc.Status:
    return to_status(InvalidArgument("the request cannot be decoded", []))


def _refusing_unary(
    behavior: Callable[[Any, aio.ServicerContext[Any, Any]], Awaitable[Any]],
) -> Callable[[Any, aio.ServicerContext[Any, Any]], Awaitable[Any]]:
    async def unary(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        if isinstance(request, Undecodable):
            await context.abort_with_status(_refused())
        return await behavior(request, context)

    return unary


def _refusing_stream(
    behavior: Callable[[Any, aio.ServicerContext[Any, Any]], AsyncIterator[Any]],
) -> Callable[[Any, aio.ServicerContext[Any, Any]], AsyncIterator[Any]]:
    async def stream(request: Any, context: aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        if isinstance(request, Undecodable):
            await context.abort_with_status(_refused())
        async for response in behavior(request, context):
            yield response

    return stream


def _attempt_request(
    decode: Callable[[bytes], wpb.StreamAttemptsRequest], data: bytes, in_batch: bool = False
) -> wpb.StreamAttemptsRequest:
    """The request, or what can be read of it: its request_id, and at the top level the
    requests of its batch (each decoded, or read the same way)."""
    try:
        return decode(data)
    except DecodeError:
        pass
    rescued = wpb.StreamAttemptsRequest()
    try:
        for number, value in _fields(data):
            if number == 1 and isinstance(value, int):
                value &= (1 << 64) - 1
                rescued.request_id = value - (1 << 64) if value >= 1 << 63 else value
            elif number == 6 and isinstance(value, bytes) and not in_batch:
                rescued.batch.append(_attempt_request(decode, value, in_batch=True))
    except ValueError:
        pass  # keep what was read before the damage
    return rescued


def _fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    """The top-level fields of a message in wire format: (number, varint or bytes)."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire_type = key >> 3, key & 7
        value: int | bytes
        if wire_type == 0:
            value, pos = _varint(data, pos)
        elif wire_type in (1, 2, 5):
            size = 8 if wire_type == 1 else 4 if wire_type == 5 else 0
            if wire_type == 2:
                size, pos = _varint(data, pos)
            value, pos = data[pos : pos + size], pos + size
            if pos > len(data):
                raise ValueError("truncated field")
        else:
            raise ValueError(f"wire type {wire_type}")
        yield number, value


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = 0
    for shift in range(0, 70, 7):
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
    raise ValueError("varint longer than 10 bytes")
