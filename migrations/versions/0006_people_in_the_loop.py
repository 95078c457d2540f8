"""waits (pause, approval, event and child-run steps), published events, run commands, child
runs, and what ListWorkers shows of a worker

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 07:00:00

New tables, and nullable (or constant-default) columns on runs and workers: nothing is
rewritten.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NOW = sa.text("now()")


def upgrade() -> None:
    op.add_column("runs", sa.Column("parent_run_id", UUID(as_uuid=True), nullable=True))
    op.add_column("runs", sa.Column("parent_step", sa.Text(), nullable=True))
    op.create_index(
        "runs_parent_created",
        "runs",
        ["parent_run_id", "created_at", "id"],
        postgresql_where=sa.text("parent_run_id IS NOT NULL"),
    )
    op.add_column(
        "workers", sa.Column("host", sa.Text(), nullable=False, server_default=sa.text("''"))
    )
    op.add_column("workers", sa.Column("connected_at", sa.DateTime(timezone=True)))
    op.add_column("workers", sa.Column("disconnected_at", sa.DateTime(timezone=True)))

    op.create_table(
        "waits",
        sa.Column("run_id", UUID(as_uuid=True), sa.ForeignKey("runs.id"), nullable=False),
        sa.Column("step_name", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("event_name", sa.Text()),
        sa.Column("correlation_key", sa.Text()),
        sa.Column("deadline_at", sa.DateTime(timezone=True)),
        sa.Column("votes", JSONB(), nullable=False, server_default=sa.text("'[]'::jsonb")),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_NOW),
        sa.Column("resolved_at", sa.DateTime(timezone=True)),
        sa.PrimaryKeyConstraint("run_id", "step_name", name="waits_pkey"),
    )
    op.create_index(
        "waits_open_events",
        "waits",
        ["event_name", "correlation_key"],
        postgresql_where=sa.text("resolved_at IS NULL AND kind = 'event'"),
    )
    op.create_index(
        "waits_open_deadlines",
        "waits",
        ["deadline_at"],
        postgresql_where=sa.text("resolved_at IS NULL AND deadline_at IS NOT NULL"),
    )
    op.create_index(
        "waits_open_children",
        "waits",
        ["run_id"],
        postgresql_where=sa.text("resolved_at IS NULL AND kind = 'child'"),
    )

    op.create_table(
        "published_events",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=True),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("correlation_key", sa.Text(), nullable=False),
        sa.Column("event_id", sa.Text(), nullable=False),
        sa.Column("payload", JSONB(), nullable=False),
        sa.Column("actor", sa.Text(), nullable=False, server_default=sa.text("''")),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=False, server_default=_NOW),
        sa.UniqueConstraint("name", "event_id", name="published_events_name_event_id_key"),
    )
    op.create_index(
        "published_events_match",
        "published_events",
        ["name", "correlation_key", "published_at"],
    )

    op.create_table(
        "run_commands",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=True),
        sa.Column("run_id", UUID(as_uuid=True), sa.ForeignKey("runs.id"), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("step_name", sa.Text()),
        sa.Column("actor", sa.Text(), nullable=False, server_default=sa.text("''")),
        sa.Column("comment", sa.Text(), nullable=False, server_default=sa.text("''")),
        sa.Column("idempotency_key", sa.Text()),
        sa.Column("request_hash", sa.Text(), nullable=False, server_default=sa.text("''")),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("refusal_reason", sa.Text()),
        sa.Column("refusal_message", sa.Text()),
        sa.Column("data", JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_NOW),
    )
    op.create_index("run_commands_run_created", "run_commands", ["run_id", "created_at", "id"])
    op.create_index(
        "run_commands_idempotency_key",
        "run_commands",
        ["run_id", "idempotency_key"],
        unique=True,
        postgresql_where=sa.text(
            "idempotency_key IS NOT NULL AND outcome = 'applied' AND type <> 'event'"
        ),
    )


def downgrade() -> None:
    op.drop_table("run_commands")
    op.drop_table("published_events")
    op.drop_table("waits")
    op.drop_column("workers", "disconnected_at")
    op.drop_column("workers", "connected_at")
    op.drop_column("workers", "host")
    op.drop_index("runs_parent_created", table_name="runs")
    op.drop_column("runs", "parent_step")
    op.drop_column("runs", "parent_run_id")
