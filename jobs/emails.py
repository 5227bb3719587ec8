"""Jobs that send email: the welcome message and task reminders."""

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel

from jobs.context import JobContext
from jobs.lifecycle import job
from jobs.retry import PermanentError
from jobs.smtp import send_once
from service.core.links import verification_url
from service.core.queries.rows import as_dict
from service.core.recurrence import zone
from service.core.tables import tasks, users
from service.core.webhooks import reminder_sent


@job(timeout=15)
async def send_welcome_email(
    ctx: JobContext, *, recipient_email: str, username: str, user_id: int | None = None
) -> dict[str, Any]:
    """The welcome message; for a new account (user_id), with the link that verifies its address."""
    verify = ""
    if user_id is not None:
        link = verification_url(ctx["settings"], user_id=user_id, email=recipient_email)
        verify = f"Confirm that this address is yours, so that we may send you reminders:\n{link}\n\n"
    body = (
        f"Hi {username},\n\n"
        "Welcome to Task Manager. Your account is ready: create tasks, and we will remind you before they are due.\n\n"
        f"{verify}— Task Manager\n"
    )
    sent = await send_once(
        ctx, key=f"job:{ctx['job_id']}", to=recipient_email, subject=f"Welcome to Task Manager, {username}!", body=body
    )
    return {"recipient": recipient_email, "sent": sent}


@job(timeout=15)
async def send_email_confirmation(ctx: JobContext, *, user_id: int, email: str) -> dict[str, Any]:
    """After an email change: the link that verifies the new address, sent to it."""
    link = verification_url(ctx["settings"], user_id=user_id, email=email)
    body = (
        "Hi,\n\nThis address was just given for a Task Manager account. If that was you, confirm it:\n"
        f"{link}\n\nIf not, ignore this message: nothing will be sent here.\n\n— Task Manager\n"
    )
    sent = await send_once(ctx, key=f"job:{ctx['job_id']}", to=email, subject="Confirm your email address", body=body)
    return {"recipient": email, "sent": sent}


class Reminder(BaseModel):
    title: str
    due_at: datetime | None
    status: str
    priority: str
    email: str
    email_verified_at: datetime | None
    username: str
    time_zone: str

    def due_line(self) -> str:
        """The due time in the owner's zone, e.g. "It is due Monday 29 March 2027 at 09:00 CEST (Europe/Berlin)"."""
        if self.due_at is None:
            return "It has no due date."
        local = self.due_at.astimezone(zone(self.time_zone))
        return f"It is due {local:%A %d %B %Y at %H:%M %Z} ({self.time_zone})."


_REMINDER_COLUMNS = (
    tasks.c.title, tasks.c.due_at, tasks.c.status, tasks.c.priority, users.c.email, users.c.email_verified_at,
    users.c.username, users.c.time_zone,
)  # fmt: skip


@job(timeout=15)
async def send_task_reminder_email(ctx: JobContext, *, task_id: int, once_key: str | None = None) -> dict[str, Any]:
    """Email a task's owner about it; once_key (from the cron) makes it once per task and due date."""
    query = sa.select(*_REMINDER_COLUMNS).join(users, users.c.id == tasks.c.owner_id).where(tasks.c.id == task_id)
    found = await ctx["db"].fetch_one(query)
    if found is None:
        raise PermanentError(f"task {task_id} no longer exists")
    row = Reminder.model_validate(as_dict(found))
    if row.email_verified_at is None:  # mail goes only to addresses their owner has verified
        return {"task_id": task_id, "recipient": row.email, "sent": False, "reason": "address not verified"}
    body = (
        f"Hi {row.username},\n\n"
        f'A reminder about your task "{row.title}" ({row.priority} priority, {row.status.replace("_", " ")}).\n'
        f"{row.due_line()}\n\n— Task Manager\n"
    )
    key = once_key or f"job:{ctx['job_id']}"
    sent = await send_once(ctx, key=key, to=row.email, subject=f"Reminder: {row.title}", body=body)
    await reminder_sent(ctx["db"], task_id=task_id, once_key=key)  # webhook event, once per key (re-runs too)
    return {"task_id": task_id, "recipient": row.email, "sent": sent}
