"""The progress helper for job code: `await report_progress(ctx, current, total)`."""

from jobs.context import JobContext
from service.core.events import publish
from service.core.queries import job_records
from service.core.schemas import JobState


async def report_progress(ctx: JobContext, current: int, total: int) -> None:
    """Record that the running job has done `current` of `total` steps, and tell live followers."""
    percent = round(100 * current / total) if total else 100
    progress = {"current": current, "total": total, "percent": percent}
    record = await job_records.transition(ctx["db"], job_id=ctx["job_id"], state=JobState.PROGRESS, progress=progress)
    if record is not None:
        await publish(ctx["redis"], record)
