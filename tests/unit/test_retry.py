from __future__ import annotations

import pytest

from server.engine.model import Backoff, Failure, RetryPolicy
from server.engine.retry import (
    DEFAULT_RETRY_POLICY,
    DELAY_CEILING_MS,
    RetryDecision,
    backoff_delay_ms,
    decide_retry,
)

BOOM = Failure(reason="handler_error", message="boom", type="RuntimeError")


def no_jitter() -> float:
    raise AssertionError("rand must not be called without jitter")


def delays(policy: RetryPolicy, attempts: int) -> list[int]:
    return [backoff_delay_ms(policy, n, no_jitter) for n in range(1, attempts + 1)]


def test_default_policy_is_three_attempts_exponential_from_one_second() -> None:
    assert DEFAULT_RETRY_POLICY.max_attempts == 3
    assert DEFAULT_RETRY_POLICY.backoff is Backoff.EXPONENTIAL
    assert delays(DEFAULT_RETRY_POLICY, 2) == [1000, 2000]


def test_exponential_backoff_doubles() -> None:
    policy = RetryPolicy(max_attempts=10, initial_delay_ms=100)
    assert delays(policy, 4) == [100, 200, 400, 800]


def test_exponential_backoff_uses_the_multiplier() -> None:
    policy = RetryPolicy(initial_delay_ms=100, multiplier=1.5)
    assert delays(policy, 4) == [100, 150, 225, 338]


def test_linear_backoff_grows_by_the_initial_delay() -> None:
    policy = RetryPolicy(backoff=Backoff.LINEAR, initial_delay_ms=250)
    assert delays(policy, 4) == [250, 500, 750, 1000]


def test_fixed_backoff_stays_put() -> None:
    policy = RetryPolicy(backoff=Backoff.FIXED, initial_delay_ms=300, multiplier=3)
    assert delays(policy, 3) == [300, 300, 300]


def test_delays_are_capped_at_max_delay() -> None:
    policy = RetryPolicy(initial_delay_ms=100, max_delay_ms=300)
    assert delays(policy, 5) == [100, 200, 300, 300, 300]


def test_huge_exponents_stay_finite() -> None:
    policy = RetryPolicy(max_attempts=1000, initial_delay_ms=1000, multiplier=10)
    assert backoff_delay_ms(policy, 999, no_jitter) == DELAY_CEILING_MS
    capped = RetryPolicy(max_attempts=1000, initial_delay_ms=1000, max_delay_ms=5000)
    assert backoff_delay_ms(capped, 999, no_jitter) == 5000
    zero = RetryPolicy(max_attempts=1000, initial_delay_ms=0, multiplier=10)
    assert backoff_delay_ms(zero, 999, no_jitter) == 0


@pytest.mark.parametrize(("rand", "expected"), [(0.0, 800), (0.5, 1000), (0.999999, 1200)])
def test_jitter_spreads_uniformly_around_the_delay(rand: float, expected: int) -> None:
    policy = RetryPolicy(initial_delay_ms=1000, jitter=0.2)
    assert backoff_delay_ms(policy, 1, lambda: rand) == expected


def test_jitter_is_capped_again() -> None:
    policy = RetryPolicy(initial_delay_ms=1000, max_delay_ms=1000, jitter=0.5)
    assert backoff_delay_ms(policy, 1, lambda: 0.99) == 1000
    assert backoff_delay_ms(policy, 1, lambda: 0.0) == 500


def test_a_retryable_failure_is_retried_with_backoff() -> None:
    policy = RetryPolicy(max_attempts=3, initial_delay_ms=100)
    assert decide_retry(policy, 1, BOOM, None) == RetryDecision(True, 100, "retry")
    assert decide_retry(policy, 2, BOOM, None) == RetryDecision(True, 200, "retry")


def test_no_retry_once_attempts_are_exhausted() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert decide_retry(policy, 3, BOOM, None) == RetryDecision(False, 0, "attempts_exhausted")
    assert decide_retry(policy, 3, BOOM, 50) == RetryDecision(False, 0, "attempts_exhausted")
    single = RetryPolicy(max_attempts=1)
    assert decide_retry(single, 1, BOOM, None).reason == "attempts_exhausted"


def test_non_retryable_failures_are_not_retried() -> None:
    policy = RetryPolicy(max_attempts=5, non_retryable_error_types=("CardDeclined",))
    declined = Failure(reason="handler_error", message="no", type="CardDeclined")
    flagged = Failure(reason="handler_error", message="no", type="X", non_retryable=True)
    assert decide_retry(policy, 1, declined, None) == RetryDecision(False, 0, "non_retryable")
    assert decide_retry(policy, 1, flagged, None) == RetryDecision(False, 0, "non_retryable")
    assert decide_retry(policy, 1, BOOM, None).retry


def test_retry_after_overrides_the_computed_delay() -> None:
    policy = RetryPolicy(max_attempts=3, initial_delay_ms=100, max_delay_ms=1000)
    assert decide_retry(policy, 1, BOOM, 5000) == RetryDecision(True, 5000, "retry_after")
    assert decide_retry(policy, 2, BOOM, 0) == RetryDecision(True, 0, "retry_after")
