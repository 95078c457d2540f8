from __future__ import annotations

import asyncio

import psycopg.errors
import pytest

from server.store.db import retry_conflicts


def test_a_command_aborted_by_a_deadlock_runs_again() -> None:
    calls = 0

    @retry_conflicts
    async def command(value: int) -> int:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise psycopg.errors.DeadlockDetected("deadlock detected")
        return value * 2

    assert asyncio.run(command(21)) == 42
    assert calls == 3


def test_other_errors_and_endless_deadlocks_are_raised() -> None:
    calls = 0

    @retry_conflicts
    async def deadlocked() -> None:
        nonlocal calls
        calls += 1
        raise psycopg.errors.DeadlockDetected("deadlock detected")

    @retry_conflicts
    async def broken() -> None:
        raise psycopg.errors.UniqueViolation("duplicate key")

    with pytest.raises(psycopg.errors.DeadlockDetected):
        asyncio.run(deadlocked())
    assert calls == 5
    with pytest.raises(psycopg.errors.UniqueViolation):
        asyncio.run(broken())
