"""The reconciler: PostgreSQL's job history is the truth, and this puts arq's state in Redis back in
line with it. Every worker runs the loop; a lock in Redis lets one of them act per period.

- A waiting job that Redis no longer holds (a crash, a flush, a restart without persistence) is
  enqueued again under its own id.
- A running job whose worker stopped beating (killed, host lost) is freed for another worker at
  once, instead of after arq's in-progress timeout.
- A job that arq gave up on without our lifecycle seeing it (max tries exceeded after crashes, an
  expired job) is recorded as FAILURE with arq's reason, so no row stays STARTED forever.
"""

import asyncio
import logging
from dataclasses import dataclass

from arq.connections import ArqRedis
from databases import Database

from service.core import dispatch, jobcodec, keys
from service.core.queries import job_records
from service.core.queuestats import live_workers
from service.core.schemas import JobRecord, JobState

log = logging.getLogger(__name__)

GRACE_SECONDS = 10  # younger rows may be between their insert and their enqueue, or just starting


@dataclass
class Reconciled:
    requeued: int = 0
    freed: int = 0
    failed: int = 0
    pruned: int = 0

    def __bool__(self) -> bool:
        return any((self.requeued, self.freed, self.failed, self.pruned))


async def _arq_failure(redis: ArqRedis, job_id: str) -> dict[str, str] | None:
    """arq's own verdict on a job it finished, when that is a failure; None if it holds no result."""
    raw = await redis.get(keys.ARQ_RESULT + job_id)
    if raw is None:
        return None
    try:
        outcome = jobcodec.deserialize(raw)
    except ValueError:
        return {"type": "JobExecutionFailed", "message": "arq stored a result that cannot be read"}
    error = outcome.get("r") if isinstance(outcome, dict) else None
    if isinstance(error, dict) and "error" in error:
        return {"type": str(error["error"]), "message": f"arq: {error.get('message', '')}"}
    return {"type": "JobExecutionFailed", "message": f"arq: {error}"}


async def _reconcile_one(db: Database, redis: ArqRedis, record: JobRecord, live: set[str], done: Reconciled) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        for prefix in (keys.ARQ_JOB, keys.ARQ_IN_PROGRESS):
            pipe.exists(prefix + record.job_id)
        queued, in_progress = await pipe.execute()
    running = record.state in (JobState.STARTED, JobState.PROGRESS)
    if in_progress:
        if running and record.worker_id and record.worker_id not in live:
            await redis.delete(keys.ARQ_IN_PROGRESS + record.job_id)  # arq may start it again now
            done.freed += 1
        return
    if queued:
        return  # waiting in arq's queue (perhaps deferred): arq has it
    failure = await _arq_failure(redis, record.job_id)
    if failure is not None:
        await job_records.finish(db, job_id=record.job_id, state=JobState.FAILURE, error=failure)
        done.failed += 1
    else:
        await dispatch.enqueue(redis, record, job_try=record.tries + 1 if record.tries else None)
        done.requeued += 1


async def reconcile(db: Database, redis: ArqRedis) -> Reconciled:
    done = Reconciled()
    live = set(await live_workers(redis))
    for record in await job_records.unsettled(db, older_than_seconds=GRACE_SECONDS):
        await _reconcile_one(db, redis, record, live, done)
    done.pruned = await job_records.prune_unowned(db, older_than_days=7)
    return done


async def run_reconciler(db: Database, redis: ArqRedis, worker_id: str, period: float) -> None:
    """Reconcile every `period` seconds while this worker runs, unless another worker just did."""
    while True:
        await asyncio.sleep(period)
        try:
            if await redis.set(keys.RECONCILER_LOCK, worker_id, nx=True, px=int(period * 900)):
                if done := await reconcile(db, redis):
                    log.info("reconciled: %s", done)
        except Exception as exc:  # PostgreSQL or Redis away: next period, then
            log.warning("reconciler skipped a round: %r", exc)
