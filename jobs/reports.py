"""The demo jobs of the seed: a CSV report of one's tasks, and a slow sum that reports progress."""

import asyncio
import csv
import io
from typing import Any

from jobs.context import JobContext
from jobs.lifecycle import job
from jobs.progress import report_progress
from service.core.queries.reports import save_report
from service.core.tables import tasks

REPORT_COLUMNS = ["id", "title", "description", "status", "priority", "due_at", "created_at", "updated_at"]
# A cell a spreadsheet would take for a formula (OWASP, "CSV Injection"): written with a leading quote.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


@job(timeout=120)
async def generate_report(ctx: JobContext, *, owner_id: int) -> dict[str, Any]:
    query = tasks.select().where(tasks.c.owner_id == owner_id).order_by(tasks.c.id)
    rows = await ctx["db"].fetch_all(query)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(REPORT_COLUMNS)
    for row in rows:
        writer.writerow([_cell(row[column]) for column in REPORT_COLUMNS])
    report = await save_report(
        ctx["db"],
        owner_id=owner_id,
        job_id=ctx["job_id"],
        filename=f"tasks-{ctx['job_id'][:12]}.csv",
        content=buffer.getvalue(),
        rows=len(rows),
    )
    return {"report_id": report.id, "report_url": f"/reports/{report.id}", "rows": report.rows}


@job(timeout=120)
async def long_running_calculation(ctx: JobContext, *, a: float, b: float, step_seconds: float = 1.0) -> float:
    steps = 5
    for step in range(1, steps + 1):
        await asyncio.sleep(step_seconds)
        await report_progress(ctx, step, steps)
    return a + b
