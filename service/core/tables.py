"""The PostgreSQL schema as SQLAlchemy Core tables; alembic revisions are generated against it."""

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, INTERVAL, JSONB

metadata = sa.MetaData(
    naming_convention={
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


def _timestamps() -> list[sa.Column[object]]:
    return [
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    ]


def _owner() -> sa.Column[int]:
    return sa.Column("owner_id", sa.BigInteger, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False)


users = sa.Table(
    "users",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("email", sa.String(320), nullable=False, unique=True),
    sa.Column("username", sa.String(64), nullable=False),
    sa.Column("hashed_password", sa.String(255), nullable=False),
    sa.Column("is_active", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("is_admin", sa.Boolean, nullable=False, server_default=sa.false()),
    # Mail goes only to a verified address; a new address is unverified until its link is followed.
    sa.Column("email_verified_at", sa.DateTime(timezone=True), nullable=True),
    # In every access token and dashboard session: raised on a password change, it refuses all older ones.
    sa.Column("token_version", sa.Integer, nullable=False, server_default="0"),
    # IANA name: recurrences run on its wall time, emails show times in it.
    sa.Column("time_zone", sa.String(64), nullable=False, server_default="UTC"),
    # The reminders of tasks that name none; null: one, REMINDER_WINDOW_MINUTES before the due time.
    sa.Column("default_remind_before", ARRAY(INTERVAL), nullable=True),
    *_timestamps(),
    # Emails are stored lower-cased; usernames keep their case but are unique regardless of it.
    sa.Index("uq_users_username_lower", sa.text("lower(username)"), unique=True),
)

items = sa.Table(
    "items",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    _owner(),
    sa.Column("title", sa.String(200), nullable=False),
    sa.Column("description", sa.Text, nullable=True),
    *_timestamps(),
    sa.Index("ix_items_owner_id", "owner_id", "id"),
)

tasks = sa.Table(
    "tasks",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    _owner(),
    sa.Column("title", sa.String(200), nullable=False),
    sa.Column("description", sa.Text, nullable=True),
    sa.Column("status", sa.String(16), nullable=False, server_default="todo"),
    sa.Column("priority", sa.String(16), nullable=False, server_default="normal"),
    sa.Column("due_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("remind_before", ARRAY(INTERVAL), nullable=True),  # null: the owner's default
    sa.Column("recurrence", sa.String(500), nullable=True),  # an RRULE (service.core.recurrence)
    sa.Column("recurrence_start", sa.DateTime(timezone=True), nullable=True),  # its DTSTART
    # False after any change to what the task's alarms depend on: the reminder cron then arms them again.
    sa.Column("armed", sa.Boolean, nullable=False, server_default=sa.false()),
    # The due date the task.due webhook event was last emitted for (once per task and due date).
    sa.Column("due_announced_for", sa.DateTime(timezone=True), nullable=True),
    # The arq job that created the row: a re-run of that job hits this constraint instead of inserting twice.
    sa.Column("job_id", sa.String(128), nullable=True, unique=True),
    *_timestamps(),
    sa.CheckConstraint("status IN ('todo', 'in_progress', 'done')", name="status"),
    sa.CheckConstraint("priority IN ('low', 'normal', 'high', 'urgent')", name="priority"),
    sa.Index("ix_tasks_owner_id", "owner_id", "id"),
    sa.Index("ix_tasks_open_due_at", "due_at", postgresql_where=sa.text("status <> 'done'")),
    sa.Index(
        "ix_tasks_due_unannounced",
        "due_at",
        "id",
        postgresql_where=sa.text(
            "due_at IS NOT NULL AND status <> 'done' AND due_announced_for IS DISTINCT FROM due_at"
        ),
    ),
    sa.Index("ix_tasks_unarmed", "id", postgresql_where=sa.text("NOT armed")),
)

# What the reminder cron has to do for a task at a moment (jobs/alarms.py): remind its owner `ahead` of
# the due date (kind "remind"), or note that the task fell due (kind "due": a recurring task moves on).
# One row per task, due date, kind and offset, so each is done once; rows of past due dates stay as history.
alarms = sa.Table(
    "alarms",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("task_id", sa.BigInteger, sa.ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False),
    sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),  # the due date it is for
    sa.Column("kind", sa.String(8), nullable=False),
    sa.Column("ahead", INTERVAL, nullable=False),
    sa.Column("wake_at", sa.DateTime(timezone=True), nullable=False),  # due_at - ahead
    sa.Column("last", sa.Boolean, nullable=False),  # the last reminder before the due date: sent even late
    sa.Column("state", sa.String(8), nullable=False, server_default="pending"),
    sa.Column("handled_at", sa.DateTime(timezone=True), nullable=True),
    sa.UniqueConstraint("task_id", "due_at", "kind", "ahead"),
    sa.CheckConstraint("kind IN ('remind', 'due')", name="kind"),
    sa.CheckConstraint("state IN ('pending', 'handed', 'skipped')", name="state"),
    sa.Index("ix_alarms_pending_wake_at", "wake_at", "id", postgresql_where=sa.text("state = 'pending'")),
)

# The occurrences a recurring task has left behind: done by its owner, or passed (missed).
task_occurrences = sa.Table(
    "task_occurrences",
    metadata,
    sa.Column("task_id", sa.BigInteger, sa.ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("due_at", sa.DateTime(timezone=True), primary_key=True),
    sa.Column("outcome", sa.String(8), nullable=False),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.CheckConstraint("outcome IN ('done', 'missed')", name="outcome"),
)

# One row per job accepted by the API or started by cron: outlives arq's result TTL.
jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("job_id", sa.String(128), primary_key=True),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("owner_id", sa.BigInteger, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=True),
    sa.Column("queue_name", sa.String(64), nullable=False),
    sa.Column("args", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.Column("state", sa.String(16), nullable=False, server_default="PENDING"),
    sa.Column("progress", JSONB, nullable=True),
    sa.Column("result", JSONB, nullable=True),
    sa.Column("error", JSONB, nullable=True),
    sa.Column("tries", sa.Integer, nullable=False, server_default="0"),
    sa.Column("request_id", sa.String(64), nullable=True),
    sa.Column("trace_context", sa.String(128), nullable=True),  # W3C traceparent (service.core.tracing)
    sa.Column("version", sa.Integer, nullable=False, server_default="1"),
    sa.Column("worker_id", sa.String(32), nullable=True),  # the worker running it, to notice when that one dies
    sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint(
        "state IN ('PENDING', 'STARTED', 'PROGRESS', 'RETRY', 'SUCCESS', 'FAILURE', 'REVOKED')", name="state"
    ),
    sa.Index("ix_jobs_owner_id_enqueued_at", "owner_id", sa.text("enqueued_at DESC")),
    sa.Index("ix_jobs_state_enqueued_at", "state", "enqueued_at"),
    sa.Index("ix_jobs_name_enqueued_at", "name", "enqueued_at"),
    sa.Index("ix_jobs_finished_at", "finished_at", postgresql_where=sa.text("finished_at IS NOT NULL")),
    # Each user's active jobs per queue, counted at every submission (the fair-share cap).
    sa.Index(
        "ix_jobs_active_owner_queue",
        "owner_id",
        "queue_name",
        postgresql_where=sa.text("state IN ('PENDING', 'PROGRESS', 'RETRY', 'STARTED')"),
    ),
)

# Each email is claimed here before it is sent, so that a job run twice sends it once.
emails = sa.Table(
    "emails",
    metadata,
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("recipient", sa.String(320), nullable=False),
    sa.Column("subject", sa.String(255), nullable=False),
    sa.Column("job_id", sa.String(128), nullable=True),
    sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
)

# Generated reports (CSV), kept in the database so that any API process can serve any worker's output.
reports = sa.Table(
    "reports",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    _owner(),
    sa.Column("job_id", sa.String(128), nullable=False, unique=True),
    sa.Column("filename", sa.String(255), nullable=False),
    sa.Column("content", sa.Text, nullable=False),
    sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Index("ix_reports_created_at", "created_at"),  # the retention cron deletes the oldest
)

# Endpoints users register for events (service/core/webhooks.py). The secret must be kept to sign with;
# the previous one goes on signing beside it until previous_secret_expires_at (a rotation's grace).
webhooks = sa.Table(
    "webhooks",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    _owner(),
    sa.Column("url", sa.String(2048), nullable=False),
    sa.Column("events", ARRAY(sa.String(32)), nullable=False),
    sa.Column("description", sa.String(500), nullable=True),
    sa.Column("active", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("secret", sa.String(128), nullable=False),
    sa.Column("previous_secret", sa.String(128), nullable=True),
    sa.Column("previous_secret_expires_at", sa.DateTime(timezone=True), nullable=True),
    *_timestamps(),
    # Every job's finish looks up its owner's active webhooks (jobs/history.py): an index probe.
    sa.Index("ix_webhooks_owner_id", "owner_id", "id"),
)

# One row per (webhook, event): the event's id is its webhook-id header on every attempt, so a receiver
# sees the same id on retries and replays. The worker takes due rows by next_attempt_at.
webhook_deliveries = sa.Table(
    "webhook_deliveries",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("webhook_id", sa.BigInteger, sa.ForeignKey("webhooks.id", ondelete="CASCADE"), nullable=False),
    sa.Column("event_id", sa.String(200), nullable=False),
    sa.Column("event_type", sa.String(32), nullable=False),
    sa.Column("data", JSONB, nullable=False),
    sa.Column("status", sa.String(16), nullable=False, server_default="pending"),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_status_code", sa.Integer, nullable=True),
    sa.Column("last_error", sa.String(500), nullable=True),
    sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True, server_default=sa.func.now()),
    sa.Column("last_attempt_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
    *_timestamps(),
    sa.UniqueConstraint("webhook_id", "event_id"),
    sa.CheckConstraint("status IN ('pending', 'retrying', 'delivered', 'failed')", name="status"),
    sa.Index("ix_webhook_deliveries_webhook_id", "webhook_id", sa.text("id DESC")),
    sa.Index(
        "ix_webhook_deliveries_due",
        "next_attempt_at",
        postgresql_where=sa.text("status IN ('pending', 'retrying')"),
    ),
    # The dashboard's card of failing deliveries, newest first.
    sa.Index(
        "ix_webhook_deliveries_failing",
        sa.text("updated_at DESC"),
        postgresql_where=sa.text("status = 'failed' OR (status = 'retrying' AND attempts > 0)"),
    ),
)
