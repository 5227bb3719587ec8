"""Handing work to the arq worker: recorded in PostgreSQL first, then enqueued under the same id.

Once the job row exists the work is durable: if Redis loses the queued job (a crash, a flush, a
restart without persistence) the worker's reconciler enqueues it again from the row.
"""

import hashlib
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg
import redis.exceptions
from arq.connections import ArqRedis
from arq.constants import expires_extra_ms
from arq.jobs import serialize_job
from arq.utils import timestamp_ms
from databases import Database

from service.core import jobcodec, keys, tracing
from service.core.batching import Batcher
from service.core.errors import IdempotencyMismatch, OwnerNotActive, QueueFull
from service.core.events import publish
from service.core.queries import job_records
from service.core.queries.users import get_user
from service.core.requestid import request_id
from service.core.schemas import JobRecord, JobState
from service.core.settings import Settings

log = logging.getLogger(__name__)


def user_caps(settings: Settings) -> dict[str, int]:
    """The most jobs one user may have waiting or running on each queue (a fair share of the workers);
    a queue with a cap of 0 has none."""
    caps = {keys.QUEUE: settings.user_jobs_active, keys.SLOW_QUEUE: settings.user_slow_jobs_active}
    return {queue: cap for queue, cap in caps.items() if cap}


class Dispatcher:
    """Hands jobs to the workers, for one process: each job's row (PENDING) first, then arq.

    The rows of concurrent submissions are written together, one statement per batch, and enqueued
    together, one pipeline per batch (group commit, service.core.batching): under load, a request shares
    its PostgreSQL and Redis round trips with the others.
    """

    def __init__(self, db: Database, redis: ArqRedis, *, caps: Mapping[str, int] | None = None) -> None:
        self.db = db
        self.redis = redis
        self.caps = caps or {}  # queue name -> the most active jobs one user may have on it
        self._rows = Batcher(self._accept_many)
        self._enqueues = Batcher(self._enqueue_many)

    async def submit(
        self,
        *,
        name: str,
        owner_id: int | None,
        args: Mapping[str, Any],
        job_id: str | None = None,
        owner_version: int | None = None,
    ) -> JobRecord:
        """Accept a job; a known job_id returns the job it names (IdempotencyMismatch if that was asked
        differently). With owner_version (the token version of the request), only for an active owner of
        that version (OwnerNotActive otherwise), checked in the statement that records the job."""
        job = _new_job(name=name, owner_id=owner_id, args=args, job_id=job_id)
        job["owner_version"] = owner_version
        with tracing.creating(job_id=job["job_id"], name=name, queue=job["queue_name"]) as trace_context:
            job["trace_context"] = trace_context
            record = await self._rows.submit(job)
            if record is None:  # the job id was known already, its owner has all the jobs they may have,
                # or the owner is not (or no longer) who the request's token says
                if owner_id is not None and owner_version is not None:
                    await _check_owner(self.db, owner_id, owner_version)
                record = await _existing(self.db, job)
                if record is None:
                    raise QueueFull()
            if not record.state.is_final:
                await self._enqueues.submit(record)
        return record

    async def submit_all(
        self,
        *,
        name: str,
        owner_id: int,
        args: Sequence[Mapping[str, Any]],
        batch_id: str | None = None,
        owner_version: int | None = None,
    ) -> list[JobRecord]:
        """Accept one job per args, all or none: one statement records them all, one pipeline enqueues
        them. With batch_id, job i is `{batch_id}-{i}`, and a batch asked again returns the jobs it
        made (IdempotencyMismatch if asked differently: other args, or more or fewer of them). QueueFull
        if the owner's cap leaves any out; OwnerNotActive as for `submit`."""
        if not args:
            return []
        batch = [
            _new_job(name=name, owner_id=owner_id, args=job_args, job_id=batch_id and f"{batch_id}-{i}")
            for i, job_args in enumerate(args)
        ]
        for job in batch:
            job["owner_version"] = owner_version
            with tracing.creating(job_id=job["job_id"], name=name, queue=job["queue_name"]) as trace_context:
                job["trace_context"] = trace_context
        try:
            created = await job_records.accept_all(self.db, batch, self.caps)
        except asyncpg.UniqueViolationError:
            if batch_id is None:
                raise
            records = await _existing_batch(self.db, batch, f"{batch_id}-{len(batch)}")
        else:
            if not created:  # the owner's cap, or the owner is not who the request's token says
                if owner_version is not None:
                    await _check_owner(self.db, owner_id, owner_version)
                raise QueueFull()
            records = [created[job["job_id"]] for job in batch]
        await enqueue_many(self.redis, [(record, None) for record in records if not record.state.is_final])
        return records

    async def _enqueue_many(self, batch: list[JobRecord]) -> list[None]:
        await enqueue_many(self.redis, [(record, None) for record in batch])
        return [None] * len(batch)

    async def _accept_many(self, batch: list[dict[str, Any]]) -> Sequence[JobRecord | BaseException | None]:
        """Each job's new row, or None where its job id was known (or came earlier in the batch)."""
        try:
            rows = await job_records.accept_many(self.db, batch, self.caps)
        except asyncpg.IntegrityConstraintViolationError:
            # One bad row (its owner deleted meanwhile, say) fails the statement: each on its own instead.
            return [await _accept_alone(self.db, job, self.caps) for job in batch]
        return [rows.pop(job["job_id"], None) for job in batch]


def _new_job(*, name: str, owner_id: int | None, args: Mapping[str, Any], job_id: str | None) -> dict[str, Any]:
    return {
        "job_id": job_id or os.urandom(16).hex(),
        "name": name,
        "queue_name": keys.queue_for(name),
        "owner_id": owner_id,
        "args": dict(args),
        "request_id": request_id.get(),
    }


async def _accept_alone(db: Database, job: dict[str, Any], caps: Mapping[str, int]) -> JobRecord | BaseException | None:
    try:
        created = await job_records.accept_many(db, [job], caps)
    except Exception as exc:  # for its caller alone
        return exc
    return created.get(job["job_id"])


async def _check_owner(db: Database, owner_id: int, version: int) -> None:
    owner = await get_user(db, user_id=owner_id)
    if owner is None or not owner.is_active or owner.token_version != version:
        raise OwnerNotActive()


async def _existing(db: Database, job: dict[str, Any]) -> JobRecord | None:
    """The job already recorded under this job's id, if it was asked the same way; None if there is none."""
    record = await job_records.get(db, job_id=job["job_id"])
    if record is None:
        return None
    if (record.owner_id, record.name, record.args) != (job["owner_id"], job["name"], job["args"]):
        raise IdempotencyMismatch()
    return record


async def _existing_batch(db: Database, batch: list[dict[str, Any]], beyond: str) -> list[JobRecord]:
    """The jobs a batch asked the same way made before; IdempotencyMismatch if it was asked differently:
    a job of it missing or asked otherwise, or one past its end (the earlier batch was longer)."""
    found = await job_records.get_many(db, job_ids=[job["job_id"] for job in batch] + [beyond])
    records = [found.get(job["job_id"]) for job in batch]
    if beyond in found or any(
        record is None or (record.owner_id, record.name, record.args) != (job["owner_id"], job["name"], job["args"])
        for job, record in zip(batch, records, strict=True)
    ):
        raise IdempotencyMismatch()
    return [record for record in records if record is not None]


async def record_job(
    db: Database, *, name: str, owner_id: int | None, args: Mapping[str, Any], job_id: str | None = None
) -> JobRecord:
    """The job's row alone, inside a caller's transaction; enqueue it once that commits."""
    job = _new_job(name=name, owner_id=owner_id, args=args, job_id=job_id)
    with tracing.creating(job_id=job["job_id"], name=name, queue=job["queue_name"]) as trace_context:
        job["trace_context"] = trace_context
        created = await job_records.accept_many(db, [job])
    record = created.get(job["job_id"]) or await _existing(db, job)
    assert record is not None  # uncapped: created, or known already
    return record


# arq's enqueue_job, in one round trip instead of four (WATCH, EXISTS, MULTI ... EXEC): the same
# keys and the same payload, so arq's workers and CLI see an ordinary arq job. It also notes the
# job's owner beside it (the workers take turns between owners), counts the job in the metrics and
# wakes the idle workers of its queue (jobs.fastworker).
ENQUEUE = """
if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then return 0 end
redis.call('PSETEX', KEYS[1], ARGV[3], ARGV[2])
if ARGV[7] ~= '' then redis.call('PSETEX', KEYS[5], ARGV[3], ARGV[7]) end
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
redis.call('HINCRBY', KEYS[4], ARGV[5], 1)
redis.call('PUBLISH', ARGV[6], '')
return 1
"""
ENQUEUE_SHA = hashlib.sha1(ENQUEUE.encode()).hexdigest()  # EVALSHA: the script travels once per server


async def enqueue(pool: ArqRedis, record: JobRecord, *, job_try: int | None = None) -> None:
    """Put the recorded job on arq's queue; a no-op while arq still holds it or its result.
    job_try numbers the next run when Redis lost arq's own count of the earlier ones."""
    await enqueue_many(pool, [(record, job_try)])


async def enqueue_many(pool: ArqRedis, batch: Sequence[tuple[JobRecord, int | None]]) -> None:
    """`enqueue` for (record, job_try) pairs, in one round trip."""
    now = timestamp_ms()
    calls = []
    for record, job_try in batch:
        payload = serialize_job(record.name, (), record.args, job_try, now, serializer=jobcodec.serialize)
        script_keys = [
            keys.ARQ_JOB + record.job_id,
            keys.ARQ_RESULT + record.job_id,
            record.queue_name,
            keys.METRICS_JOB_EVENTS,
            keys.JOB_OWNER + record.job_id,
        ]
        script_args = [record.job_id, payload, expires_extra_ms, now, f"{record.name}|enqueued"]
        owner = "" if record.owner_id is None else str(record.owner_id)
        calls.append((len(script_keys), *script_keys, *script_args, keys.wake(record.queue_name), owner))
    try:
        missing = await _run_scripts(pool, calls)
        if missing:  # a new or restarted Redis: send the script itself, once
            await pool.script_load(ENQUEUE)
            await _run_scripts(pool, missing)
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
        # Accepted all the same: the rows are durable and the reconciler enqueues them once Redis is back.
        log.warning("%d job(s) recorded but not enqueued (%r); the reconciler will enqueue them", len(batch), exc)


async def _run_scripts(pool: ArqRedis, calls: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """EVALSHA of ENQUEUE for each call, pipelined; the calls Redis did not know the script for."""
    async with pool.pipeline(transaction=False) as pipe:
        for call in calls:
            pipe.evalsha(ENQUEUE_SHA, *call)
        results = await pipe.execute(raise_on_error=False)
    for result in results:
        if isinstance(result, Exception) and not isinstance(result, redis.exceptions.NoScriptError):
            raise result
    return [
        call for call, result in zip(calls, results, strict=True) if isinstance(result, redis.exceptions.NoScriptError)
    ]


async def revoke(db: Database, pool: ArqRedis, record: JobRecord) -> JobRecord | None:
    """Abort a queued or running job: REVOKED in its row first (so the worker, seeing the cancellation,
    finds it so and leaves it), then arq's abort. None if it had already finished."""
    revoked = await job_records.finish(db, job_id=record.job_id, state=JobState.REVOKED)
    if revoked is None:
        return None
    async with pool.pipeline(transaction=False) as pipe:
        pipe.zadd(keys.ARQ_ABORT, {record.job_id: timestamp_ms()})
        pipe.publish(keys.wake(record.queue_name), "")  # its workers act now, even without keyspace notices
        await pipe.execute()
    await publish(pool, revoked, metric="aborted")
    return revoked
