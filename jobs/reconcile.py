"""The reconciler: accepted jobs that Redis no longer holds are enqueued again from PostgreSQL."""

from typing import Any

from jobs.context import JobContext
from jobs.lifecycle import job
from service import dispatch, keys
from service.queries import jobs

GRACE_SECONDS = 30  # younger jobs may be between their row and their enqueue


async def _in_redis(ctx: JobContext, job_id: str) -> bool:
    names = (keys.ARQ_JOB + job_id, keys.ARQ_IN_PROGRESS + job_id, keys.ARQ_RESULT + job_id)
    return bool(await ctx["redis"].exists(*names))


@job(timeout=60, max_tries=1)  # the next run is the retry
async def reconcile_jobs(ctx: JobContext) -> dict[str, Any]:
    requeued = 0
    for record in await jobs.waiting(ctx["db"], older_than_seconds=GRACE_SECONDS):
        if not await _in_redis(ctx, record.job_id):
            await dispatch.enqueue(ctx["redis"], record)
            requeued += 1
    return {"requeued": requeued}
