"""Task jobs: inserting a new task, and the cron that finds tasks falling due."""

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from jobs.context import JobContext
from jobs.lifecycle import job
from jobs.retry import PermanentError
from service.core.dispatch import Dispatcher
from service.core.queries.prepared import Prepared, param
from service.core.tables import emails, tasks

_INSERT_TASK = Prepared(
    insert(tasks)
    .values(**{name: param(name) for name in ("owner_id", "title", "description", "due_at", "priority", "job_id")})
    .on_conflict_do_nothing(index_elements=[tasks.c.job_id])
    .returning(tasks.c.id)
)
_TASK_OF_JOB = Prepared(sa.select(tasks.c.id).where(tasks.c.job_id == param("job_id")))


@job(timeout=10)
async def process_new_task(
    ctx: JobContext,
    *,
    owner_id: int,
    title: str,
    description: str | None = None,
    due_at: str | None = None,
    priority: str = "normal",
) -> dict[str, Any]:
    """Insert the task; a second run of the same job finds the row the first one inserted."""
    db, job_id = ctx["db"], ctx["job_id"]
    due = datetime.fromisoformat(due_at) if due_at else None
    try:
        task_id = await _INSERT_TASK.fetch_val(
            db,
            owner_id=owner_id,
            title=title,
            description=description,
            due_at=due,
            priority=priority,
            job_id=job_id,
        )
    except asyncpg.ForeignKeyViolationError:
        raise PermanentError(f"user {owner_id} no longer exists") from None
    if task_id is None:
        task_id = await _TASK_OF_JOB.fetch_val(db, job_id=job_id)
    return {"task_id": task_id}


def reminder_key(task_id: int, due_at: datetime) -> str:
    """One reminder per task and due date: moving the due date earns a new one."""
    return f"due:{task_id}:{int(due_at.timestamp())}"


@job(timeout=20, max_tries=1)  # the next minute's run is the retry
async def send_due_reminders(ctx: JobContext) -> dict[str, Any]:
    """Hand a reminder job to each open task due within the window that has not had its reminder."""
    window = timedelta(minutes=ctx["settings"].reminder_window_minutes)
    now = datetime.now(UTC)
    due = (
        sa.select(tasks.c.id, tasks.c.owner_id, tasks.c.due_at)
        .where(tasks.c.status != "done", tasks.c.due_at > now - timedelta(minutes=5), tasks.c.due_at <= now + window)
        .order_by(tasks.c.due_at)
        .limit(1000)
    )
    enqueued = 0
    dispatcher = Dispatcher(ctx["db"], ctx["redis"])
    for task in await ctx["db"].fetch_all(due):
        key = reminder_key(task["id"], task["due_at"])
        if await ctx["db"].fetch_val(sa.select(emails.c.sent_at).where(emails.c.key == key)) is not None:
            continue
        await dispatcher.submit(
            name="send_task_reminder_email",
            owner_id=task["owner_id"],
            args={"task_id": task["id"], "once_key": key},
            job_id=f"reminder-{key.replace(':', '-')}",
        )
        enqueued += 1
    return {"reminders": enqueued}
