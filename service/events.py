"""Job status changes as Server-Sent Events: pushed by the worker over Redis pub/sub, checked against
PostgreSQL whenever the channel is quiet (so a missed message costs a second, never the final state)."""

import logging
from collections.abc import AsyncIterator

from pydantic import BaseModel
from redis.asyncio import Redis
from redis.exceptions import RedisError

from service import keys
from service.metrics import add_job_metrics
from service.queries import jobs
from service.schemas import JobRecord, JobStatus
from service.state import AppState

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


async def publish(redis: Redis, record: JobRecord, *, metric: str | None = None, seconds: float | None = None) -> None:
    """Tell live followers (and, given a metric event, the metrics) about a change, in one round trip.

    Best effort: followers that miss a message find the change in PostgreSQL within QUIET_RECHECK.
    """
    event = JobEvent(version=record.version, status=record.status())
    try:
        async with redis.pipeline(transaction=False) as pipe:
            pipe.publish(keys.job_events(record.job_id), event.model_dump_json())
            if metric is not None:
                add_job_metrics(pipe, record.name, metric, seconds)
            await pipe.execute()
    except (RedisError, OSError) as exc:
        log.warning("could not publish the status of job %s: %r", record.job_id, exc)


async def _read(state: AppState, job_id: str) -> JobEvent | None:
    record = await jobs.get(state.db, job_id=job_id)
    return None if record is None else JobEvent(version=record.version, status=record.status())


async def status_events(state: AppState, job_id: str) -> AsyncIterator[bytes]:
    """One event per change of the job's status, ending after a final state."""
    pubsub = state.redis.pubsub()
    await pubsub.subscribe(keys.job_events(job_id))  # before the first read: no change can slip in between
    try:
        last_version = 0
        quiet = 0
        event = await _read(state, job_id)
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
            event = await _read(state, job_id)
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
