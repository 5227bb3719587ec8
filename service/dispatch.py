"""Handing work to the arq worker: recorded in PostgreSQL first, then enqueued under the same id.

Once the job row exists the work is durable: if Redis loses the queued job (a crash, a flush, a
restart without persistence) the worker's reconciler enqueues it again from the row.
"""

import logging
import uuid
from collections.abc import Mapping
from typing import Any

import redis.exceptions
from arq.connections import ArqRedis
from arq.utils import timestamp_ms
from databases import Database

from service import keys
from service.errors import APIError
from service.events import publish
from service.metrics import count_job_event
from service.queries import jobs
from service.requestid import request_id
from service.schemas import JobRecord, JobState

log = logging.getLogger(__name__)


class IdempotencyMismatch(APIError):
    status_code = 422
    detail = "This Idempotency-Key was already used for a different request"


async def submit(
    db: Database,
    pool: ArqRedis,
    *,
    name: str,
    owner_id: int | None,
    args: Mapping[str, Any],
    job_id: str | None = None,
) -> JobRecord:
    """Accept a job: its row (PENDING) first, then arq. A known job_id returns the job it names."""
    record = await record_job(db, name=name, owner_id=owner_id, args=args, job_id=job_id)
    if not record.state.is_final:
        await enqueue(pool, record)
    return record


async def record_job(
    db: Database, *, name: str, owner_id: int | None, args: Mapping[str, Any], job_id: str | None = None
) -> JobRecord:
    """The job's row alone (inside a caller's transaction, say); enqueue it once that commits."""
    record, created = await jobs.accept(
        db,
        job_id=job_id or uuid.uuid4().hex,
        name=name,
        queue_name=keys.queue_for(name),
        owner_id=owner_id,
        args=args,
        request_id=request_id.get(),
    )
    if not created and (record.owner_id != owner_id or record.name != name or record.args != dict(args)):
        raise IdempotencyMismatch()
    return record


async def enqueue(pool: ArqRedis, record: JobRecord, *, job_try: int | None = None) -> None:
    """Put the recorded job on arq's queue; a no-op while arq still holds it or its result.
    job_try numbers the next run when Redis lost arq's own count of the earlier ones."""
    try:
        queued = await pool.enqueue_job(
            record.name, _job_id=record.job_id, _queue_name=record.queue_name, _job_try=job_try, **record.args
        )
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
        # Accepted all the same: the row is durable and the reconciler enqueues it once Redis is back.
        log.warning("job %s recorded but not enqueued (%r); the reconciler will enqueue it", record.job_id, exc)
        return
    if queued is not None:
        await count_job_event(pool, record.name, "enqueued")


async def revoke(db: Database, pool: ArqRedis, record: JobRecord) -> JobRecord | None:
    """Abort a queued or running job: REVOKED in its row first (so the worker, seeing the cancellation,
    finds it so and leaves it), then arq's abort. None if it had already finished."""
    revoked = await jobs.finish(db, job_id=record.job_id, state=JobState.REVOKED)
    if revoked is None:
        return None
    await pool.zadd(keys.ARQ_ABORT, {record.job_id: timestamp_ms()})
    await publish(pool, revoked)
    await count_job_event(pool, revoked.name, "aborted")
    return revoked
