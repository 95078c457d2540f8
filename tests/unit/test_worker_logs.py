"""The worker's logging setup honours SQUIDMESH_LOG_LEVEL."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import structlog

from worker_sdk import configure_logging


@pytest.fixture(autouse=True)
def _restore_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def test_level_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SQUIDMESH_LOG_LEVEL", "warning")
    configure_logging(json=True)
    log = structlog.get_logger("t")
    log.info("attempt_failed")
    log.warning("attempt_stream_broken")
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["event"] for line in lines] == ["attempt_stream_broken"]


def test_an_explicit_level_wins_and_info_is_the_default(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SQUIDMESH_LOG_LEVEL", "error")
    configure_logging("debug", json=True)
    structlog.get_logger("t").debug("a")
    monkeypatch.delenv("SQUIDMESH_LOG_LEVEL")
    configure_logging(json=True)
    structlog.get_logger("t").debug("b")
    structlog.get_logger("t").info("c")
    events = [json.loads(line)["event"] for line in capsys.readouterr().out.splitlines()]
    assert events == ["a", "c"]
