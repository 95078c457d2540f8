"""One settings object, read from SQUIDMESH_* environment variables and validated at start."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from squidmesh import DEFAULT_ADDRESS

_BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


class SettingsError(ValueError):
    """A SQUIDMESH_* variable has an invalid value."""


@dataclass(frozen=True)
class Settings:
    address: str = DEFAULT_ADDRESS
    """host:port the gRPC server listens on (SQUIDMESH_ADDRESS)."""
    database_url: str = ""
    """Postgres URL; empty starts the embedded Postgres (SQUIDMESH_DATABASE_URL)."""
    redis_url: str = ""
    """Redis URL the server publishes to; empty starts the embedded Redis (SQUIDMESH_REDIS_URL)."""
    worker_broker_url: str = ""
    """Broker URL handed to workers when it differs from redis_url (SQUIDMESH_WORKER_BROKER_URL)."""
    data_dir: Path = Path("data")
    """Where the embedded services keep their data (SQUIDMESH_DATA_DIR)."""
    db_pool_size: int = 10
    """Postgres connections per server process (SQUIDMESH_DB_POOL_SIZE)."""
    heartbeat_timeout_ms: int = 10_000
    """Default lease of a running attempt without a heartbeat (SQUIDMESH_HEARTBEAT_TIMEOUT_MS)."""
    heartbeat_interval_ms: int = 1_000
    """How often workers heartbeat (SQUIDMESH_HEARTBEAT_INTERVAL_MS)."""
    dispatch_timeout_ms: int = 30_000
    """An attempt not claimed this long after its dispatch is published again
    (SQUIDMESH_DISPATCH_TIMEOUT_MS)."""
    reconcile_interval_ms: int = 1_000
    """How often the reconciler looks for lost dispatches and expired leases
    (SQUIDMESH_RECONCILE_INTERVAL_MS)."""
    watch_keepalive_ms: int = 15_000
    """Keep-alive period of idle WatchRun streams (SQUIDMESH_WATCH_KEEPALIVE_MS)."""
    max_payload_bytes: int = 1_048_576
    """Largest accepted payload or step output (SQUIDMESH_MAX_PAYLOAD_BYTES)."""
    handoff: bool = True
    """Whether the answer to a worker's result may hand it the run's next attempt, claimed in
    the same transaction, instead of publishing it (SQUIDMESH_HANDOFF: true or false)."""
    stream_prefix: str = "squidmesh:queue:"
    """Prefix of the Redis stream of each task queue (SQUIDMESH_STREAM_PREFIX)."""
    log_level: str = "info"
    """debug, info, warning or error (SQUIDMESH_LOG_LEVEL)."""

    @staticmethod
    def from_env(env: dict[str, str] | None = None, **overrides: Any) -> Settings:
        env = dict(os.environ if env is None else env)
        values: dict[str, Any] = {}
        for f in fields(Settings):
            raw = env.get(f"SQUIDMESH_{f.name.upper()}")
            if raw is None or raw == "":
                continue
            values[f.name] = _parse(f.name, raw, f.type)
        settings = replace(Settings(), **values)
        settings = replace(settings, **overrides)
        settings.validate()
        return settings

    def validate(self) -> None:
        host, _, port = self.address.rpartition(":")
        if not host or not port.isdigit():
            raise SettingsError(f"SQUIDMESH_ADDRESS must be host:port, got {self.address!r}")
        for name in (
            "db_pool_size",
            "heartbeat_timeout_ms",
            "heartbeat_interval_ms",
            "dispatch_timeout_ms",
            "reconcile_interval_ms",
            "watch_keepalive_ms",
            "max_payload_bytes",
        ):
            if getattr(self, name) <= 0:
                raise SettingsError(f"SQUIDMESH_{name.upper()} must be positive")
        if self.log_level not in {"debug", "info", "warning", "error"}:
            raise SettingsError("SQUIDMESH_LOG_LEVEL must be debug, info, warning or error")

    def masked(self) -> dict[str, str]:
        """The settings as printable strings, with passwords in URLs masked."""
        out = {}
        for f in fields(self):
            value = str(getattr(self, f.name))
            out[f.name] = mask_url(value) if f.name.endswith("_url") else value
        return out


def _parse(name: str, raw: str, type_name: Any) -> Any:
    if type_name in ("int", int):
        try:
            return int(raw)
        except ValueError:
            raise SettingsError(
                f"SQUIDMESH_{name.upper()} must be an integer, got {raw!r}"
            ) from None
    if type_name in ("bool", bool):
        if raw.lower() not in _BOOLEANS:
            raise SettingsError(f"SQUIDMESH_{name.upper()} must be true or false, got {raw!r}")
        return _BOOLEANS[raw.lower()]
    if type_name in ("Path", Path):
        return Path(raw)
    return raw


def mask_url(url: str) -> str:
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))
