"""attempt kinds (task, wait), attempt deadlines, timer indexes

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 19:30:00

Wait steps are timer rows in the attempts table (kind 'wait', fired by the timer loop rather
than published); task attempts of steps with an attempt timeout get a deadline at their claim.
The timer loop's scans get an index each: timers not yet kicked (every wake-up), and kicked
attempts never claimed (once per interval), instead of one over every scheduled attempt.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "attempts",
        sa.Column("kind", sa.String(length=16), server_default=sa.text("'task'"), nullable=False),
    )
    op.add_column("attempts", sa.Column("attempt_timeout_ms", sa.Integer(), nullable=True))
    op.add_column("attempts", sa.Column("deadline_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        "attempts_running_deadline",
        "attempts",
        ["deadline_at"],
        unique=False,
        postgresql_where=sa.text("status = 'running' AND deadline_at IS NOT NULL"),
    )
    op.drop_index(
        "attempts_scheduled_due",
        table_name="attempts",
        postgresql_where=sa.text("status = 'scheduled'"),
    )
    op.create_index(
        "attempts_timers_due",
        "attempts",
        ["due_at"],
        unique=False,
        postgresql_where=sa.text("status = 'scheduled' AND kicked_at IS NULL"),
    )
    op.create_index(
        "attempts_scheduled_kicked",
        "attempts",
        ["kicked_at"],
        unique=False,
        postgresql_where=sa.text("status = 'scheduled' AND kicked_at IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("attempts_scheduled_kicked", table_name="attempts")
    op.drop_index("attempts_timers_due", table_name="attempts")
    op.create_index(
        "attempts_scheduled_due",
        "attempts",
        ["due_at"],
        unique=False,
        postgresql_where=sa.text("status = 'scheduled'"),
    )
    op.drop_index(
        "attempts_running_deadline",
        table_name="attempts",
        postgresql_where=sa.text("status = 'running' AND deadline_at IS NOT NULL"),
    )
    op.drop_column("attempts", "deadline_at")
    op.drop_column("attempts", "attempt_timeout_ms")
    op.drop_column("attempts", "kind")
