"""schedules, their ticks, and the schedule a run came from

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 09:00:00

New tables, and nullable columns on runs: nothing is rewritten.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NOW = sa.text("now()")
_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("runs", sa.Column("schedule_id", sa.Text()))
    op.add_column("runs", sa.Column("schedule_nominal_at", _TIME))
    op.add_column("runs", sa.Column("schedule_fired_at", _TIME))
    op.add_column("runs", sa.Column("schedule_origin", sa.String(16)))
    op.create_index(
        "runs_schedule_created",
        "runs",
        ["schedule_id", "created_at", "id"],
        postgresql_where=sa.text("schedule_id IS NOT NULL"),
    )

    op.create_table(
        "schedules",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("workflow", sa.Text(), nullable=False),
        sa.Column("trigger", sa.Text(), nullable=False),
        sa.Column("payload", JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("cron_expression", sa.Text(), nullable=False),
        sa.Column("time_zone", sa.Text(), nullable=False),
        sa.Column("start_at", _TIME),
        sa.Column("end_at", _TIME),
        sa.Column("jitter_ms", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("skipped_time_policy", sa.String(16), nullable=False),
        sa.Column("repeated_time_policy", sa.String(16), nullable=False),
        sa.Column("catchup_window_ms", sa.BigInteger(), nullable=False),
        sa.Column("missed_tick_policy", sa.String(16), nullable=False),
        sa.Column("max_catchup_runs", sa.Integer(), nullable=False),
        sa.Column("overlap_policy", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("pause_note", sa.Text(), nullable=False, server_default=sa.text("''")),
        sa.Column("paused_by", sa.Text(), nullable=False, server_default=sa.text("''")),
        sa.Column("origin", sa.String(16), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False, server_default=sa.text("1")),
        sa.Column("next_nominal_at", _TIME),
        sa.Column("next_due_at", _TIME),
        sa.Column("last_tick_at", _TIME),
        sa.Column("last_run_id", UUID(as_uuid=True)),
        sa.Column("buffered_nominal_at", _TIME),
        sa.Column("created_at", _TIME, nullable=False, server_default=_NOW),
        sa.Column("updated_at", _TIME, nullable=False, server_default=_NOW),
    )
    op.create_index(
        "schedules_due",
        "schedules",
        ["next_due_at"],
        postgresql_where=sa.text("state = 'active' AND next_due_at IS NOT NULL"),
    )
    op.create_index("schedules_workflow", "schedules", ["workflow", "id"])
    op.create_index(
        "schedules_buffered",
        "schedules",
        ["buffered_nominal_at"],
        postgresql_where=sa.text("buffered_nominal_at IS NOT NULL"),
    )

    op.create_table(
        "schedule_ticks",
        sa.Column("schedule_id", sa.Text(), nullable=False),
        sa.Column("nominal_at", _TIME, nullable=False),
        sa.Column("fired_at", _TIME, nullable=False, server_default=_NOW),
        sa.Column("run_id", UUID(as_uuid=True)),
        sa.Column("origin", sa.String(16), nullable=False),
        sa.Column("outcome", sa.String(24), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False, server_default=sa.text("''")),
        sa.PrimaryKeyConstraint("schedule_id", "nominal_at", name="schedule_ticks_pkey"),
    )

    op.create_table("timer_alive", sa.Column("second", sa.BigInteger(), primary_key=True))


def downgrade() -> None:
    op.drop_table("timer_alive")
    op.drop_table("schedule_ticks")
    op.drop_table("schedules")
    op.drop_index("runs_schedule_created", table_name="runs")
    for column in ("schedule_origin", "schedule_fired_at", "schedule_nominal_at", "schedule_id"):
        op.drop_column("runs", column)
