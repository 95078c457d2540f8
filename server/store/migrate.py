"""Schema migrations: Alembic, linear and forward-only, run programmatically."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config

_SERVER = Path(__file__).resolve().parents[1]
# An installed wheel carries them as server/migrations; a checkout (or an editable install)
# has them at the top of the repository.
MIGRATIONS_DIR = (
    _SERVER / "migrations" if (_SERVER / "migrations").is_dir() else _SERVER.parent / "migrations"
)


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str) -> None:
    """Migrates the database to the latest revision (a no-op when it is current)."""
    command.upgrade(alembic_config(database_url), "head")


async def upgrade_async(database_url: str) -> None:
    # Alembic's env.py runs its own event loop, so it gets a thread of its own.
    await asyncio.to_thread(upgrade, database_url)
