import sqlalchemy as sa

from service.core import tables
from service.core.queries.owned import Owned
from service.core.schemas import TaskPublic, TaskQuery

tasks = Owned(tables.tasks, TaskPublic)


def task_filters(query: TaskQuery) -> list[sa.ColumnElement[bool]]:
    filters = []
    if query.status is not None:
        filters.append(tables.tasks.c.status == query.status.value)
    if query.due_before is not None:
        filters.append(tables.tasks.c.due_at < query.due_before)
    return filters
