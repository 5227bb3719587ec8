"""Task jobs: inserting a new task, and the cron that finds tasks falling due."""

from datetime import datetime, timedelta
from typing import Any

import asyncpg
import sqlalchemy as sa
from pydantic import TypeAdapter
from sqlalchemy.dialects.postgresql import ARRAY, INTERVAL, insert

from jobs.alarms import run_alarms
from jobs.context import JobContext
from jobs.lifecycle import job
from jobs.retry import PermanentError
from service.core.queries.prepared import Prepared, param
from service.core.tables import tasks

_COLUMNS = ("owner_id", "title", "description", "due_at", "priority", "job_id", "recurrence", "recurrence_start")
_INSERT_TASK = Prepared(
    insert(tasks)
    .values(
        **{name: param(name) for name in _COLUMNS},
        remind_before=param("remind_before", type_=ARRAY(INTERVAL)),
        armed=param("armed", type_=sa.Boolean),
    )
    .on_conflict_do_nothing(index_elements=[tasks.c.job_id])
    .returning(tasks.c.id)
)
_DURATIONS = TypeAdapter(list[timedelta])  # the ISO 8601 durations of the job's JSON arguments
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
    remind_before: list[str] | None = None,
    recurrence: str | None = None,
) -> dict[str, Any]:
    """Insert the task; a second run of the same job finds the row the first one inserted. A task with a
    due date starts unarmed: the reminder cron gives it its alarms."""
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
            remind_before=None if remind_before is None else _DURATIONS.validate_python(remind_before),
            recurrence=recurrence,
            recurrence_start=due if recurrence else None,
            armed=due is None,
        )
    except asyncpg.ForeignKeyViolationError:
        raise PermanentError(f"user {owner_id} no longer exists") from None
    if task_id is None:
        task_id = await _TASK_OF_JOB.fetch_val(db, job_id=job_id)
    return {"task_id": task_id}


@job(timeout=20, max_tries=1)  # the next run is the retry
async def send_due_reminders(ctx: JobContext) -> dict[str, Any]:
    """The reminder cron: arms tasks' alarms, sends the reminders whose time has come and moves recurring
    tasks on past their due dates, each once (jobs/alarms.py)."""
    return await run_alarms(ctx)
