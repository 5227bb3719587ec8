"""The demo jobs of the seed: a CSV report of one's tasks, and a slow sum that reports progress."""

import asyncio
import csv
import io
from collections.abc import Sequence
from typing import Any

from jobs.context import JobContext
from jobs.lifecycle import job
from jobs.progress import report_progress
from service.core.queries.reports import delete_reports_older_than, save_report
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
    content, written = _csv(rows, limit=ctx["settings"].report_max_bytes)
    report = await save_report(
        ctx["db"],
        owner_id=owner_id,
        job_id=ctx["job_id"],
        filename=f"tasks-{ctx['job_id'][:12]}.csv",
        content=content,
        rows=written,
    )
    result = {"report_id": report.id, "report_url": f"/reports/{report.id}", "rows": report.rows}
    return {**result, "truncated": written < len(rows)}


def _csv(rows: Sequence[Any], *, limit: int) -> tuple[str, int]:
    """The rows as CSV, as many as fit in `limit` bytes (REPORT_MAX_BYTES); and how many that was."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(REPORT_COLUMNS)
    size, written = len(buffer.getvalue().encode()), 0
    for row in rows:
        line = io.StringIO()
        csv.writer(line).writerow([_cell(row[column]) for column in REPORT_COLUMNS])
        size += len(line.getvalue().encode())
        if size > limit:
            break
        buffer.write(line.getvalue())
        written += 1
    return buffer.getvalue(), written


@job(timeout=60, max_tries=1)  # the next hour's run is the retry
async def delete_old_reports(ctx: JobContext) -> dict[str, Any]:
    """Reports are kept REPORT_RETENTION_DAYS (7), then deleted; their URLs answer 404 after that."""
    deleted = await delete_reports_older_than(ctx["db"], days=ctx["settings"].report_retention_days)
    return {"deleted": deleted}


@job(timeout=120)
async def long_running_calculation(ctx: JobContext, *, a: float, b: float, step_seconds: float = 1.0) -> float:
    steps = 5
    for step in range(1, steps + 1):
        await asyncio.sleep(step_seconds)
        await report_progress(ctx, step, steps)
    return a + b
