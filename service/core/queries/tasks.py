"""Queries on tasks. A change to what a task's alarms depend on (due date, offsets, rule, status) marks it
unarmed in the statement that makes it, for the reminder cron to arm (service.core.queries.alarms); "done"
on a recurring task records the occurrence and moves the task to the next one."""

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from databases import Database
from sqlalchemy.dialects.postgresql import insert

from service.core import tables
from service.core.errors import InvalidField
from service.core.queries.owned import Owned
from service.core.queries.rows import as_dict
from service.core.recurrence import next_due, upcoming
from service.core.schemas import Occurrences, PastOccurrence, TaskPublic, TaskQuery, TaskStatus

ALARM_FIELDS = frozenset({"due_at", "remind_before", "recurrence", "status"})
PAST_SHOWN = 10
_SERIES_COLUMNS = (
    tables.tasks.c.id, tables.tasks.c.due_at, tables.tasks.c.status, tables.tasks.c.recurrence,
    tables.tasks.c.recurrence_start, tables.users.c.time_zone,
)  # fmt: skip


@dataclass(frozen=True)
class Series:
    """What a change to a task's schedule depends on: the task as it is, and its owner's zone."""

    id: int
    due_at: datetime | None
    status: str
    recurrence: str | None
    recurrence_start: datetime | None
    time_zone: str


def plan_change(
    current: Series, changes: Mapping[str, Any], *, now: datetime
) -> tuple[dict[str, Any], datetime | None]:
    """The values to write for `changes`, and the due date of an occurrence it completes (to record).

    Setting the due date or the rule starts the series again at the (new) due date; "done" on a recurring
    task moves it to the occurrence after the later of its due date and now, still to do.
    """
    values = {**changes, "armed": False}
    due = changes.get("due_at", current.due_at)
    rule = changes.get("recurrence", current.recurrence)
    if rule is not None and due is None:
        field = "due_at" if "due_at" in changes else "recurrence"
        raise InvalidField(field, "a recurring task needs due_at: its first occurrence, where the series starts")
    start = current.recurrence_start or due
    if {"due_at", "recurrence"} & changes.keys():
        start = due if rule is not None else None
        values["recurrence_start"] = start
    if changes.get("status") != TaskStatus.DONE or current.status == TaskStatus.DONE or rule is None:
        return values, None
    assert due is not None and start is not None
    following = next_due(rule, start=start, after=max(due, now), time_zone=current.time_zone)
    if following is not None:
        values.update(due_at=following, status=TaskStatus.TODO.value)
    return values, due


class TaskStore(Owned[TaskPublic]):
    async def _series(self, db: Database, *, owner_id: int, row_id: int, lock: bool) -> Series | None:
        query = (
            sa.select(*_SERIES_COLUMNS)
            .join(tables.users, tables.users.c.id == tables.tasks.c.owner_id)
            .where(self._where(owner_id, row_id))
        )
        row = await db.fetch_one(query.with_for_update(of=tables.tasks) if lock else query)
        return None if row is None else Series(**as_dict(row))

    async def update(
        self, db: Database, *, owner_id: int, row_id: int, changes: Mapping[str, Any]
    ) -> TaskPublic | None:
        if not ALARM_FIELDS & changes.keys():
            return await super().update(db, owner_id=owner_id, row_id=row_id, changes=changes)
        async with db.transaction():
            current = await self._series(db, owner_id=owner_id, row_id=row_id, lock=True)
            if current is None:
                return None
            values, completed = plan_change(current, changes, now=datetime.now(UTC))
            if completed is not None:
                record = {"task_id": row_id, "due_at": completed, "outcome": "done"}
                await db.execute(insert(tables.task_occurrences).values(**record).on_conflict_do_nothing())
            return await super().update(db, owner_id=owner_id, row_id=row_id, changes=values)

    async def occurrences(self, db: Database, *, owner_id: int, row_id: int, count: int) -> Occurrences | None:
        """The task's next `count` due times, its current due date first, and its latest past occurrences."""
        series = await self._series(db, owner_id=owner_id, row_id=row_id, lock=False)
        if series is None:
            return None
        due, rule = series.due_at, series.recurrence
        following: list[datetime] = []
        if due is not None and rule is not None and count > 1:
            start = series.recurrence_start or due
            following = upcoming(rule, start=start, after=due, time_zone=series.time_zone, count=count - 1)
        past = await db.fetch_all(
            sa.select(tables.task_occurrences)
            .where(tables.task_occurrences.c.task_id == row_id)
            .order_by(tables.task_occurrences.c.due_at.desc())
            .limit(PAST_SHOWN)
        )
        return Occurrences(
            task_id=series.id,
            recurrence=rule,
            time_zone=series.time_zone,
            upcoming=([due] if due is not None else []) + following,
            past=[PastOccurrence.model_validate(as_dict(row)) for row in past],
        )


tasks = TaskStore(tables.tasks, TaskPublic)


async def rearm_defaults(db: Database, *, owner_id: int) -> None:
    """After the owner's default offsets changed: the open tasks that follow them are armed again."""
    await db.execute(
        tables.tasks.update()
        .where(
            tables.tasks.c.owner_id == owner_id,
            tables.tasks.c.remind_before.is_(None),
            tables.tasks.c.due_at.is_not(None),
            tables.tasks.c.status != TaskStatus.DONE.value,
        )
        .values(armed=False)
    )


def task_filters(query: TaskQuery) -> list[sa.ColumnElement[bool]]:
    filters = []
    if query.status is not None:
        filters.append(tables.tasks.c.status == query.status.value)
    if query.due_before is not None:
        filters.append(tables.tasks.c.due_at < query.due_before)
    return filters
