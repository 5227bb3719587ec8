from typing import Any

import sqlalchemy as sa
from databases import Database
from pydantic import BaseModel
from sqlalchemy.dialects.postgresql import insert

from service.core.queries.rows import as_dict
from service.core.tables import reports


class Report(BaseModel):
    id: int
    owner_id: int
    job_id: str
    filename: str
    content: str
    rows: int


def _report(row: Any) -> Report:
    return Report.model_validate(as_dict(row))


async def save_report(db: Database, *, owner_id: int, job_id: str, filename: str, content: str, rows: int) -> Report:
    """Store the report a job made; a re-run of the same job overwrites its own report, never adds one."""
    values = {"filename": filename, "content": content, "rows": rows}
    query = (
        insert(reports)
        .values(owner_id=owner_id, job_id=job_id, **values)
        .on_conflict_do_update(index_elements=[reports.c.job_id], set_=values)
        .returning(*reports.c)
    )
    return _report(await db.fetch_one(query))


async def get_report(db: Database, *, report_id: int, owner_id: int) -> Report | None:
    row = await db.fetch_one(reports.select().where(reports.c.id == report_id, reports.c.owner_id == owner_id))
    return None if row is None else _report(row)


async def delete_reports_older_than(db: Database, *, days: int) -> int:
    cutoff = sa.func.now() - sa.func.make_interval(0, 0, 0, days)
    deleted = await db.fetch_all(reports.delete().where(reports.c.created_at < cutoff).returning(reports.c.id))
    return len(deleted)
