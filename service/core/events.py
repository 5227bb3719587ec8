"""Job status changes as Server-Sent Events: pushed by the worker over Redis pub/sub, checked against
PostgreSQL whenever the channel is quiet (so a missed message costs a second, never the final state)."""

import logging
from collections.abc import AsyncIterator, Sequence
from typing import NamedTuple

from databases import Database
from pydantic import BaseModel
from redis.asyncio import Redis
from redis.exceptions import RedisError

from service.core import keys
from service.core.metrics import add_job_metrics
from service.core.queries import job_records
from service.core.schemas import JobRecord, JobStatus

log = logging.getLogger(__name__)

QUIET_RECHECK = 1.0  # seconds without a message before the row is read again
KEEPALIVE_EVERY = 15  # quiet rechecks between keep-alive comments, which keep proxies from closing the stream


def sse(status: JobStatus) -> bytes:
    return b"event: status\ndata: " + status.model_dump_json().encode() + b"\n\n"


class JobEvent(BaseModel):
    """What the worker publishes: the status with the row's version, so that a message overtaken by
    a newer read of the row is recognised as old and dropped."""

    version: int
    status: JobStatus


class Announcement(NamedTuple):
    """A change of a job to announce: to its followers, and (given a metric event) to the metrics."""

    record: JobRecord
    metric: str | None = None
    seconds: float | None = None  # the run's duration, for the histogram


async def announce(redis: Redis, announcements: Sequence[Announcement]) -> None:
    """Publish each change and count its metric, all in one round trip.

    Best effort: followers that miss a message find the change in PostgreSQL within QUIET_RECHECK.
    """
    try:
        async with redis.pipeline(transaction=False) as pipe:
            for record, _, _ in announcements:
                event = JobEvent(version=record.version, status=record.status())
                pipe.publish(keys.job_events(record.job_id), event.model_dump_json())
            counted = [(record.name, metric, seconds) for record, metric, seconds in announcements if metric]
            add_job_metrics(pipe, counted)
            await pipe.execute()
    except (RedisError, OSError) as exc:
        log.warning("could not publish the status of %d job(s): %r", len(announcements), exc)


async def publish(redis: Redis, record: JobRecord, *, metric: str | None = None, seconds: float | None = None) -> None:
    """Announce one change (see `announce`)."""
    await announce(redis, [Announcement(record, metric, seconds)])


async def _read(db: Database, job_id: str) -> JobEvent | None:
    record = await job_records.get(db, job_id=job_id)
    return None if record is None else JobEvent(version=record.version, status=record.status())


async def status_events(db: Database, redis: Redis, job_id: str) -> AsyncIterator[bytes]:
    """One event per change of the job's status, ending after a final state."""
    pubsub = redis.pubsub()
    await pubsub.subscribe(keys.job_events(job_id))  # before the first read: no change can slip in between
    try:
        last_version = 0
        quiet = 0
        event = await _read(db, job_id)
        while event is not None:
            if event.version > last_version:
                last_version = event.version
                yield sse(event.status)
                if event.status.state.is_final:
                    return
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=QUIET_RECHECK)
            if message is not None:
                event = JobEvent.model_validate_json(message["data"])
                continue
            quiet += 1
            if quiet % KEEPALIVE_EVERY == 0:
                yield b": keep-alive\n\n"
            event = await _read(db, job_id)
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
