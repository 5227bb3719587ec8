"""The reconciler: PostgreSQL's job history is the truth, and this puts arq's state in Redis back in
line with it. Every worker runs the loop; a lock in Redis lets one of them act per period.

- A waiting job that Redis no longer holds (a crash, a flush, a restart without persistence) is
  enqueued again under its own id.
- A running job whose worker stopped beating (killed, host lost) is freed for another worker, instead
  of after arq's in-progress timeout: once the worker is found silent in two rounds at least
  `confirm_after` apart. One round is not enough: a Redis that was frozen or restarting held every
  worker's heartbeat, and they all look silent to the first round after it.
- A job that arq finished without our lifecycle deciding it (its payload gone before a worker read it,
  a worker without its function, a failure whose record PostgreSQL lost, a try arq counted that
  never ran) is enqueued again from its row, never failed on arq's word: a stale arq result or try
  count must not block that, so both are cleared. Only two verdicts of arq's are kept: tries that
  our lifecycle really used up (FAILURE, with arq's reason) and an abort through arq (REVOKED).
"""

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from arq.connections import ArqRedis
from databases import Database

from service.core import dispatch, jobcodec, keys
from service.core.queries import job_records
from service.core.queuestats import live_workers
from service.core.schemas import JobRecord, JobState

log = logging.getLogger(__name__)

GRACE_SECONDS = 10  # younger rows may be between their insert and their enqueue, or just starting
KEEP_SUSPECT_SECONDS = 120  # a silent worker's first sighting is forgotten after this


MaxTries = Mapping[str, int]  # job name -> tries allowed


@dataclass
class Reconciled:
    requeued: int = 0
    freed: int = 0
    failed: int = 0
    revoked: int = 0
    pruned: int = 0

    def __bool__(self) -> bool:
        return any((self.requeued, self.freed, self.failed, self.revoked, self.pruned))


async def _arq_error(redis: ArqRedis, job_id: str) -> dict[str, Any] | None:
    """The error arq recorded for a job it finished ({"type", "message"}); None if it holds no result or a
    success (which, with the row still active, did not come from our lifecycle either)."""
    raw = await redis.get(keys.ARQ_RESULT + job_id)
    if raw is None:
        return None
    try:
        outcome = jobcodec.deserialize(raw)
    except ValueError:
        return {"type": "JobExecutionFailed", "message": "arq stored a result that cannot be read"}
    error = outcome.get("r") if isinstance(outcome, dict) and outcome.get("s") is False else None
    if isinstance(error, jobcodec.JobError):
        return {"type": error.type_name, "message": f"arq: {error.message}"}
    if isinstance(error, BaseException):
        return {"type": type(error).__name__, "message": f"arq: {error}"}
    return None


async def _settle(db: Database, redis: ArqRedis, record: JobRecord, max_tries: MaxTries, done: Reconciled) -> None:
    """A job arq holds neither queued nor running: run it again from its row, unless arq's record says it
    was aborted or its tries are used up."""
    error = await _arq_error(redis, record.job_id)
    allowed = max_tries.get(record.name, 1)
    if error is not None and error["type"] == "CancelledError":  # arq's Job.abort() before it started
        await job_records.finish(db, job_id=record.job_id, state=JobState.REVOKED, error=error)
        done.revoked += 1
    elif error is not None and record.tries >= allowed:
        error.update(message=f"gave up after {record.tries} tries: {error['message']}", exhausted=True)
        await job_records.finish(db, job_id=record.job_id, state=JobState.FAILURE, error=error)
        done.failed += 1
    else:
        # arq's stale result would make the enqueue a no-op, and its try count is ours to set.
        await redis.delete(keys.ARQ_RESULT + record.job_id, keys.ARQ_RETRY + record.job_id)
        await dispatch.enqueue(redis, record, job_try=record.tries + 1 if record.tries else None)
        done.requeued += 1


async def _reconcile_one(
    db: Database, redis: ArqRedis, record: JobRecord, dead: set[str], max_tries: MaxTries, done: Reconciled
) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        for prefix in (keys.ARQ_JOB, keys.ARQ_IN_PROGRESS):
            pipe.exists(prefix + record.job_id)
        queued, in_progress = await pipe.execute()
    running = record.state in (JobState.STARTED, JobState.PROGRESS)
    if in_progress:
        if running and record.worker_id in dead:
            async with redis.pipeline(transaction=False) as pipe:
                pipe.delete(keys.ARQ_IN_PROGRESS + record.job_id)  # arq may start it again now
                pipe.publish(keys.wake(record.queue_name), "")
                await pipe.execute()
            done.freed += 1
        return
    if queued:
        return  # waiting in arq's queue (perhaps deferred): arq has it
    await _settle(db, redis, record, max_tries, done)


async def _dead_workers(redis: ArqRedis, records: list[JobRecord], confirm_after: float) -> set[str]:
    """The workers of these jobs that were silent in an earlier round, confirm_after seconds ago or more,
    and are still; the newly silent ones are noted, for a later round to confirm."""
    workers = {record.worker_id for record in records if record.worker_id}
    if not workers:
        return set()  # nothing running that a silent worker could hold: no Redis round trip
    live = set(await live_workers(redis))
    if back := workers & live:  # beating again: a later silence starts a new count
        await redis.delete(*(keys.SUSPECT + worker_id for worker_id in back))
    silent = workers - live
    now, dead = time.time(), set()
    for worker_id in silent:
        key = keys.SUSPECT + worker_id
        if await redis.set(key, now, nx=True, ex=KEEP_SUSPECT_SECONDS):
            continue  # first found silent now
        first = float(await redis.get(key) or now)
        if now - first >= confirm_after:
            dead.add(worker_id)
    return dead


async def reconcile(
    db: Database, redis: ArqRedis, *, max_tries: MaxTries, confirm_after: float = GRACE_SECONDS
) -> Reconciled:
    done = Reconciled()
    records = await job_records.unsettled(db, older_than_seconds=GRACE_SECONDS)
    dead = await _dead_workers(redis, records, confirm_after)
    for record in records:
        await _reconcile_one(db, redis, record, dead, max_tries, done)
    done.pruned = await job_records.prune_unowned(db, older_than_days=7)
    return done


async def run_reconciler(db: Database, redis: ArqRedis, worker_id: str, period: float, max_tries: MaxTries) -> None:
    """Reconcile every `period` seconds while this worker runs, unless another worker just did."""
    while True:
        await asyncio.sleep(period)
        try:
            if await redis.set(keys.RECONCILER_LOCK, worker_id, nx=True, px=int(period * 900)):
                if done := await reconcile(db, redis, max_tries=max_tries, confirm_after=period):
                    log.info("reconciled: %s", done)
        except Exception as exc:  # PostgreSQL or Redis away: next period, then
            log.warning("reconciler skipped a round: %r", exc)
