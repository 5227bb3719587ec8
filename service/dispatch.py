"""Handing work to the arq worker: recorded in PostgreSQL first, then enqueued under the same id.

Once the job row exists the work is durable: if Redis loses the queued job (a crash, a flush, a
restart without persistence) the worker's reconciler enqueues it again from the row.
"""

import hashlib
import logging
import uuid
from collections.abc import Mapping
from typing import Any

import redis.exceptions
from arq.connections import ArqRedis
from arq.constants import expires_extra_ms
from arq.jobs import serialize_job
from arq.utils import timestamp_ms
from databases import Database

from service import jobcodec, keys
from service.errors import APIError
from service.events import publish
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


# arq's enqueue_job, in one round trip instead of four (WATCH, EXISTS, MULTI ... EXEC): the same
# keys and the same payload, so arq's workers and CLI see an ordinary arq job. It also counts the
# job in the metrics and wakes the idle workers of its queue (jobs.fastworker).
ENQUEUE = """
if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then return 0 end
redis.call('PSETEX', KEYS[1], ARGV[3], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
redis.call('HINCRBY', KEYS[4], ARGV[5], 1)
redis.call('PUBLISH', ARGV[6], '')
return 1
"""
ENQUEUE_SHA = hashlib.sha1(ENQUEUE.encode()).hexdigest()  # EVALSHA: the script travels once per server


async def enqueue(pool: ArqRedis, record: JobRecord, *, job_try: int | None = None) -> None:
    """Put the recorded job on arq's queue; a no-op while arq still holds it or its result.
    job_try numbers the next run when Redis lost arq's own count of the earlier ones."""
    now = timestamp_ms()
    payload = serialize_job(record.name, (), record.args, job_try, now, serializer=jobcodec.serialize)
    script_keys = [
        keys.ARQ_JOB + record.job_id,
        keys.ARQ_RESULT + record.job_id,
        record.queue_name,
        keys.METRICS_JOB_EVENTS,
    ]
    script_args: list[Any] = [
        record.job_id,
        payload,
        expires_extra_ms,
        now,
        f"{record.name}|enqueued",
        keys.wake(record.queue_name),
    ]
    try:
        try:
            await pool.evalsha(ENQUEUE_SHA, len(script_keys), *script_keys, *script_args)  # type: ignore[misc]
        except redis.exceptions.NoScriptError:  # a new or restarted Redis: send the script itself
            await pool.eval(ENQUEUE, len(script_keys), *script_keys, *script_args)  # type: ignore[misc]
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
        # Accepted all the same: the row is durable and the reconciler enqueues it once Redis is back.
        log.warning("job %s recorded but not enqueued (%r); the reconciler will enqueue it", record.job_id, exc)


async def revoke(db: Database, pool: ArqRedis, record: JobRecord) -> JobRecord | None:
    """Abort a queued or running job: REVOKED in its row first (so the worker, seeing the cancellation,
    finds it so and leaves it), then arq's abort. None if it had already finished."""
    revoked = await jobs.finish(db, job_id=record.job_id, state=JobState.REVOKED)
    if revoked is None:
        return None
    await pool.zadd(keys.ARQ_ABORT, {record.job_id: timestamp_ms()})
    await publish(pool, revoked, metric="aborted")
    return revoked
