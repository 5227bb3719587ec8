"""accounts: verified emails, token versions; tasks remember their reminder; reports by age; active jobs by owner

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 21:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("users", sa.Column("email_verified_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("users", sa.Column("token_version", sa.Integer(), server_default="0", nullable=False))
    op.add_column("tasks", sa.Column("reminded_for", sa.DateTime(timezone=True), nullable=True))
    # The reminder cron reads open tasks falling due that have not had their reminder, in due order.
    op.create_index(
        "ix_tasks_due_unreminded",
        "tasks",
        ["due_at", "id"],
        postgresql_where=sa.text("due_at IS NOT NULL AND status <> 'done' AND reminded_for IS DISTINCT FROM due_at"),
    )
    op.create_index("ix_reports_created_at", "reports", ["created_at"])  # the retention cron deletes the oldest
    # Each user's active jobs per queue, counted at every submission (the fair-share cap).
    op.create_index(
        "ix_jobs_active_owner_queue",
        "jobs",
        ["owner_id", "queue_name"],
        postgresql_where=sa.text("state IN ('PENDING', 'PROGRESS', 'RETRY', 'STARTED')"),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_active_owner_queue", table_name="jobs")
    op.drop_index("ix_reports_created_at", table_name="reports")
    op.drop_index("ix_tasks_due_unreminded", table_name="tasks")
    op.drop_column("tasks", "reminded_for")
    op.drop_column("users", "token_version")
    op.drop_column("users", "email_verified_at")
