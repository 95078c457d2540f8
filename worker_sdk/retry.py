"""Retry policy of a task step."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from squidmesh.v1 import workflow_pb2
from squidmesh.values import to_duration

__all__ = ["BackoffName", "Retry"]

BackoffName = Literal["fixed", "linear", "exponential"]

_BACKOFFS: dict[str, workflow_pb2.BackoffType.ValueType] = {
    "fixed": workflow_pb2.BACKOFF_TYPE_FIXED,
    "linear": workflow_pb2.BACKOFF_TYPE_LINEAR,
    "exponential": workflow_pb2.BACKOFF_TYPE_EXPONENTIAL,
}


@dataclass(frozen=True)
class Retry:
    """How a failed task step is retried. Delays are in seconds.

    `max_attempts` counts the first attempt (1 = never retry). `multiplier` None means the
    server default (2.0). `non_retryable` lists error types (exception class names; exception
    classes are accepted and stand for their name) that are never retried.
    """

    max_attempts: int = 3
    backoff: BackoffName = "exponential"
    initial_delay: float | None = None
    max_delay: float | None = None
    multiplier: float | None = None
    jitter: float = 0.0
    non_retryable: Sequence[str | type[BaseException]] = ()

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if self.backoff not in _BACKOFFS:
            raise ValueError(
                f"unknown backoff {self.backoff!r}; expected one of {', '.join(_BACKOFFS)}"
            )
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"jitter must be in [0, 1], got {self.jitter}")
        if self.multiplier is not None and self.multiplier <= 0:
            raise ValueError(f"multiplier must be positive, got {self.multiplier}")
        if isinstance(self.non_retryable, str):
            raise TypeError("non_retryable is a list of error types, not a string")

    @property
    def non_retryable_error_types(self) -> list[str]:
        return [t if isinstance(t, str) else t.__name__ for t in self.non_retryable]

    def to_proto(self) -> workflow_pb2.RetryPolicy:
        policy = workflow_pb2.RetryPolicy(
            max_attempts=self.max_attempts,
            backoff=_BACKOFFS[self.backoff],
            multiplier=self.multiplier or 0.0,
            jitter=self.jitter,
            non_retryable_error_types=self.non_retryable_error_types,
        )
        if self.initial_delay is not None:
            policy.initial_delay.CopyFrom(to_duration(self.initial_delay))
        if self.max_delay is not None:
            policy.max_delay.CopyFrom(to_duration(self.max_delay))
        return policy
