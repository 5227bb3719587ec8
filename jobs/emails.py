"""Jobs that send email: the welcome message and task reminders."""

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel

from jobs.context import JobContext
from jobs.lifecycle import job
from jobs.retry import PermanentError
from jobs.smtp import send_once
from service.core.queries.rows import as_dict
from service.core.tables import tasks, users


@job(timeout=15)
async def send_welcome_email(ctx: JobContext, *, recipient_email: str, username: str) -> dict[str, Any]:
    body = (
        f"Hi {username},\n\n"
        "Welcome to Task Manager. Your account is ready: create tasks, and we will remind you before they are due.\n\n"
        "— Task Manager\n"
    )
    sent = await send_once(
        ctx, key=f"job:{ctx['job_id']}", to=recipient_email, subject=f"Welcome to Task Manager, {username}!", body=body
    )
    return {"recipient": recipient_email, "sent": sent}


class Reminder(BaseModel):
    title: str
    due_at: datetime | None
    status: str
    priority: str
    email: str
    username: str


@job(timeout=15)
async def send_task_reminder_email(ctx: JobContext, *, task_id: int, once_key: str | None = None) -> dict[str, Any]:
    """Email a task's owner about it; once_key (from the cron) makes it once per task and due date."""
    query = (
        sa.select(tasks.c.title, tasks.c.due_at, tasks.c.status, tasks.c.priority, users.c.email, users.c.username)
        .join(users, users.c.id == tasks.c.owner_id)
        .where(tasks.c.id == task_id)
    )
    found = await ctx["db"].fetch_one(query)
    if found is None:
        raise PermanentError(f"task {task_id} no longer exists")
    row = Reminder.model_validate(as_dict(found))
    due = f"It is due {row.due_at:%A %d %B %Y at %H:%M %Z}." if row.due_at else "It has no due date."
    body = (
        f"Hi {row.username},\n\n"
        f'A reminder about your task "{row.title}" ({row.priority} priority, {row.status.replace("_", " ")}).\n'
        f"{due}\n\n— Task Manager\n"
    )
    key = once_key or f"job:{ctx['job_id']}"
    sent = await send_once(ctx, key=key, to=row.email, subject=f"Reminder: {row.title}", body=body)
    return {"task_id": task_id, "recipient": row.email, "sent": sent}
