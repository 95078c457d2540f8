"""attempt handoff: attempts handed to a worker in the answer to its previous result

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21 22:00:00

An attempt due now that the decision after a result hands straight to the reporting worker is
inserted already running; `handoff_from` names the attempt whose result answer carried it, so
that a worker resending that result (its answer lost with the connection) is handed it again.
Nullable, no default: adding it rewrites nothing.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("attempts", sa.Column("handoff_from", sa.UUID(), nullable=True))


def downgrade() -> None:
    op.drop_column("attempts", "handoff_from")
