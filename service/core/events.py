"""Job status changes, announced: published on the job's Redis channel for live followers (the API's
Server-Sent Events, service.api.streams) and counted in the metrics."""

import asyncio
import logging
from collections.abc import Sequence
from typing import NamedTuple

from pydantic import BaseModel
from redis.asyncio import Redis
from redis.exceptions import RedisError

from service.core import keys
from service.core.metrics import add_job_metrics
from service.core.schemas import JobRecord, JobStatus

log = logging.getLogger(__name__)

ANNOUNCE_TIMEOUT = 1.0  # seconds


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

    Best effort, and bounded: followers that miss a message find the change in PostgreSQL a few seconds
    later, and a job does not wait on a Redis that does not answer (a worker's commands are retried
    through an outage) longer than ANNOUNCE_TIMEOUT.
    """
    try:
        async with asyncio.timeout(ANNOUNCE_TIMEOUT), redis.pipeline(transaction=False) as pipe:
            for record, _, _ in announcements:
                event = JobEvent(version=record.version, status=record.status())
                pipe.publish(keys.job_events(record.job_id), event.model_dump_json())
            counted = [(record.name, metric, seconds) for record, metric, seconds in announcements if metric]
            add_job_metrics(pipe, counted)
            await pipe.execute()
    except (RedisError, OSError, TimeoutError) as exc:
        log.warning("could not publish the status of %d job(s): %r", len(announcements), exc)


async def publish(redis: Redis, record: JobRecord, *, metric: str | None = None, seconds: float | None = None) -> None:
    """Announce one change (see `announce`)."""
    await announce(redis, [Announcement(record, metric, seconds)])
