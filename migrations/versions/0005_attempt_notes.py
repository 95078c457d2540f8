"""when an attempt's progress and its declines were last recorded as run events

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 05:00:00

A heartbeat whose progress changed, and a worker giving an attempt back because it lacks the
handler, are recorded in the run's event log so that the watch and GetRun say what happens,
but at most once a second per attempt, so the log stays small. Nullable columns without a
default: nothing is rewritten.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "attempts", sa.Column("progress_noted_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column(
        "attempts", sa.Column("declined_noted_at", sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    op.drop_column("attempts", "declined_noted_at")
    op.drop_column("attempts", "progress_noted_at")
