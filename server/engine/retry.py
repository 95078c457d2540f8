"""Retry policy: whether a failed attempt is retried, and after how long."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from server.engine.model import Backoff, Failure, RetryPolicy

DEFAULT_RETRY_POLICY = RetryPolicy()
"""The server default: 3 attempts, exponential backoff from 1 s."""

DELAY_CEILING_MS = 365 * 24 * 3600 * 1000
"""Bound on any computed delay, so that huge exponents stay finite and schedulable."""


@dataclass(frozen=True)
class RetryDecision:
    retry: bool
    delay_ms: int
    reason: str
    """"retry", "retry_after" (the handler chose the delay), "non_retryable" or
    "attempts_exhausted"."""


def decide_retry(
    policy: RetryPolicy,
    attempt_number: int,
    failure: Failure,
    retry_after_ms: int | None,
    rand: Callable[[], float] = random.random,
) -> RetryDecision:
    """What follows the failure of attempt `attempt_number` (1-based)."""
    if failure.non_retryable or failure.type in policy.non_retryable_error_types:
        return RetryDecision(retry=False, delay_ms=0, reason="non_retryable")
    if attempt_number >= policy.max_attempts:
        return RetryDecision(retry=False, delay_ms=0, reason="attempts_exhausted")
    if retry_after_ms is not None:
        delay_ms = min(max(0, retry_after_ms), DELAY_CEILING_MS)
        return RetryDecision(retry=True, delay_ms=delay_ms, reason="retry_after")
    return RetryDecision(
        retry=True, delay_ms=backoff_delay_ms(policy, attempt_number, rand), reason="retry"
    )


def backoff_delay_ms(
    policy: RetryPolicy, attempt_number: int, rand: Callable[[], float] = random.random
) -> int:
    """The delay before the attempt after `attempt_number`, jitter applied."""
    n = attempt_number
    initial = policy.initial_delay_ms
    if policy.backoff is Backoff.FIXED:
        delay = float(initial)
    elif policy.backoff is Backoff.LINEAR:
        delay = float(initial * n)
    else:
        try:
            delay = initial * policy.multiplier ** (n - 1)
        except OverflowError:
            delay = float(DELAY_CEILING_MS) if initial else 0.0
    delay = _cap(policy, delay)
    if policy.jitter:
        delay = _cap(policy, delay * (1 + policy.jitter * (2 * rand() - 1)))
    return round(delay)


def _cap(policy: RetryPolicy, delay: float) -> float:
    cap = DELAY_CEILING_MS if policy.max_delay_ms is None else policy.max_delay_ms
    return max(0.0, min(delay, float(cap)))
