"""Job metrics, counted cluster-wide: every worker and API process adds to counters in Redis, so any
API process's /metrics (service.api.metrics) shows the whole system's jobs."""

import collections
import logging
from collections.abc import Iterable

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from service.core import keys

log = logging.getLogger(__name__)

JOB_EVENTS = ("enqueued", "started", "succeeded", "failed", "retried", "aborted")
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


def add_job_metrics(pipe: Pipeline, job_events: Iterable[tuple[str, str, float | None]]) -> None:
    """Queue, on a Redis pipeline, job events (name, event, the run's seconds or None): each counted,
    and each duration in the histogram. Added up first, so a batch costs a command per field it touches."""
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    seconds_by_name: collections.defaultdict[str, float] = collections.defaultdict(float)
    for name, event, seconds in job_events:
        counts[keys.METRICS_JOB_EVENTS, f"{name}|{event}"] += 1
        if seconds is not None:
            # Counted in the one bucket it falls in (the smallest bound it fits): a command, not one per
            # bucket; /metrics adds them up into Prometheus' cumulative buckets.
            bucket = next((str(bound) for bound in DURATION_BUCKETS if seconds <= bound), "+Inf")
            counts[keys.METRICS_JOB_DURATION, f"{name}|{bucket}"] += 1
            seconds_by_name[name] += seconds
    for (key, field), count in counts.items():
        pipe.hincrby(key, field, count)
    for name, total in seconds_by_name.items():
        pipe.hincrbyfloat(keys.METRICS_JOB_DURATION, f"{name}|sum", total)


async def count_job_event(redis: Redis, name: str, event: str, seconds: float | None = None) -> None:
    """Best effort, like all metrics: a Redis outage loses a count, never a job."""
    try:
        async with redis.pipeline(transaction=False) as pipe:
            add_job_metrics(pipe, [(name, event, seconds)])
            await pipe.execute()
    except (RedisError, OSError) as exc:
        log.debug("job metric lost: %r", exc)
