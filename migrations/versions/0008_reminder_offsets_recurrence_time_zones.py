"""reminder offsets, recurring tasks, time zones: users' zone and default offsets, tasks' offsets, rule and
arming flag, the alarms the reminder cron works through, and the occurrences a series leaves behind

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 12:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("users", sa.Column("time_zone", sa.String(length=64), server_default="UTC", nullable=False))
    op.add_column("users", sa.Column("default_remind_before", postgresql.ARRAY(postgresql.INTERVAL()), nullable=True))
    op.add_column("tasks", sa.Column("remind_before", postgresql.ARRAY(postgresql.INTERVAL()), nullable=True))
    op.add_column("tasks", sa.Column("recurrence", sa.String(length=500), nullable=True))
    op.add_column("tasks", sa.Column("recurrence_start", sa.DateTime(timezone=True), nullable=True))
    # Existing tasks start unarmed: the reminder cron gives each with a due date its alarms.
    op.add_column("tasks", sa.Column("armed", sa.Boolean(), server_default=sa.false(), nullable=False))
    op.create_index("ix_tasks_unarmed", "tasks", ["id"], postgresql_where=sa.text("NOT armed"))
    op.drop_index("ix_tasks_due_unreminded", table_name="tasks")
    op.drop_column("tasks", "reminded_for")
    op.create_table(
        "alarms",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("task_id", sa.BigInteger(), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("ahead", postgresql.INTERVAL(), nullable=False),
        sa.Column("wake_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last", sa.Boolean(), nullable=False),
        sa.Column("state", sa.String(length=8), server_default="pending", nullable=False),
        sa.Column("handled_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("kind IN ('remind', 'due')", name=op.f("ck_alarms_kind")),
        sa.CheckConstraint("state IN ('pending', 'handed', 'skipped')", name=op.f("ck_alarms_state")),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.id"], name=op.f("fk_alarms_task_id_tasks"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alarms")),
        sa.UniqueConstraint("task_id", "due_at", "kind", "ahead", name=op.f("uq_alarms_task_id")),
    )
    # The cron reads the pending alarms whose time has come, in time order.
    op.create_index(
        "ix_alarms_pending_wake_at", "alarms", ["wake_at", "id"], postgresql_where=sa.text("state = 'pending'")
    )
    op.create_table(
        "task_occurrences",
        sa.Column("task_id", sa.BigInteger(), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("outcome", sa.String(length=8), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("outcome IN ('done', 'missed')", name=op.f("ck_task_occurrences_outcome")),
        sa.ForeignKeyConstraint(
            ["task_id"], ["tasks.id"], name=op.f("fk_task_occurrences_task_id_tasks"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("task_id", "due_at", name=op.f("pk_task_occurrences")),
    )


def downgrade() -> None:
    op.drop_table("task_occurrences")
    op.drop_index("ix_alarms_pending_wake_at", table_name="alarms")
    op.drop_table("alarms")
    op.add_column("tasks", sa.Column("reminded_for", sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        "ix_tasks_due_unreminded",
        "tasks",
        ["due_at", "id"],
        postgresql_where=sa.text("due_at IS NOT NULL AND status <> 'done' AND reminded_for IS DISTINCT FROM due_at"),
    )
    op.drop_index("ix_tasks_unarmed", table_name="tasks")
    op.drop_column("tasks", "armed")
    op.drop_column("tasks", "recurrence_start")
    op.drop_column("tasks", "recurrence")
    op.drop_column("tasks", "remind_before")
    op.drop_column("users", "default_remind_before")
    op.drop_column("users", "time_zone")
