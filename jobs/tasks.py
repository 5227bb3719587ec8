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
from service.core.tables import tasks, users

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


REMINDER_PAGE = 500
_MARK_REMINDED = (
    "UPDATE tasks SET reminded_for = handed.due_at"
    " FROM unnest(CAST(:ids AS bigint[]), CAST(:dues AS timestamptz[])) AS handed(id, due_at)"
    " WHERE tasks.id = handed.id AND tasks.due_at = handed.due_at"
)


def _unreminded(now: datetime, window: timedelta, after: tuple[datetime, int] | None) -> sa.Select[Any]:
    """A page of open tasks falling due within the window that have not had their reminder for this due
    date, of owners with a verified address, in (due_at, id) order after `after` (ix_tasks_due_unreminded)."""
    query = (
        sa.select(tasks.c.id, tasks.c.owner_id, tasks.c.due_at)
        .join(users, users.c.id == tasks.c.owner_id)
        .where(
            tasks.c.due_at.is_not(None),
            tasks.c.status != "done",
            tasks.c.reminded_for.is_distinct_from(tasks.c.due_at),
            tasks.c.due_at > now - timedelta(minutes=5),
            tasks.c.due_at <= now + window,
            users.c.email_verified_at.is_not(None),
        )
        .order_by(tasks.c.due_at, tasks.c.id)
        .limit(REMINDER_PAGE)
    )
    if after is not None:
        query = query.where(sa.tuple_(tasks.c.due_at, tasks.c.id) > sa.tuple_(*after))
    return query


@job(timeout=20, max_tries=1)  # the next minute's run is the retry
async def send_due_reminders(ctx: JobContext) -> dict[str, Any]:
    """Hand a reminder job to each open task due within the window that has not had its reminder, a
    page at a time; each task handed is marked, so the next run reads only what is new."""
    window = timedelta(minutes=ctx["settings"].reminder_window_minutes)
    now = datetime.now(UTC)
    db, enqueued, after = ctx["db"], 0, None
    dispatcher = Dispatcher(db, ctx["redis"])
    while page := await db.fetch_all(_unreminded(now, window, after)):
        for task in page:
            key = reminder_key(task["id"], task["due_at"])
            await dispatcher.submit(
                name="send_task_reminder_email",
                owner_id=task["owner_id"],
                args={"task_id": task["id"], "once_key": key},
                job_id=f"reminder-{key.replace(':', '-')}",
            )
        # Handed over: each job is recorded in PostgreSQL, and its email keyed by task and due date. A task
        # whose due date moved meanwhile stays unmarked: the next run reminds it of the new date.
        handed = {"ids": [task["id"] for task in page], "dues": [task["due_at"] for task in page]}
        await db.execute(_MARK_REMINDED, handed)
        enqueued += len(page)
        after = (page[-1]["due_at"], page[-1]["id"])
    return {"reminders": enqueued}
