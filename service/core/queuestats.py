"""How the queues and workers stand. arq keeps a job in its queue (a sorted set scored by when it may
run) until the job finishes, so the raw size counts running and deferred jobs too; this tells them
apart. Workers are listed by their own heartbeats (jobs.heartbeat)."""

import time
from dataclasses import dataclass

from redis.asyncio import Redis

from service.core import keys

SAMPLE = 1000  # ready jobs examined one by one; beyond that the count is an estimate


@dataclass(frozen=True)
class QueueStats:
    waiting: int  # ready to run, no worker on it yet
    running: int  # taken by a worker (arq's in-progress key)
    deferred: int  # retries waiting out their backoff, cron runs not yet due
    oldest_waiting_age: float | None  # seconds


async def queue_stats(redis: Redis) -> QueueStats:
    """Both queues together."""
    now_ms = time.time() * 1000
    async with redis.pipeline(transaction=False) as pipe:
        for queue in keys.QUEUES:
            pipe.zcount(queue, "-inf", now_ms)
            pipe.zcount(queue, f"({now_ms}", "+inf")
            pipe.zrangebyscore(queue, "-inf", now_ms, start=0, num=SAMPLE, withscores=True)
        counted = await pipe.execute()
    ready = sum(counted[0::3])
    deferred = sum(counted[1::3])
    sample = sorted((entry for entries in counted[2::3] for entry in entries), key=lambda entry: entry[1])
    async with redis.pipeline(transaction=False) as pipe:
        for job_id, _ in sample:
            pipe.exists(keys.ARQ_IN_PROGRESS + job_id.decode())
        taken = await pipe.execute()
    waiting_scores = [score for (_, score), busy in zip(sample, taken, strict=True) if not busy]
    running = sum(taken)
    oldest = (now_ms - waiting_scores[0]) / 1000 if waiting_scores else None
    return QueueStats(waiting=ready - running, running=running, deferred=deferred, oldest_waiting_age=oldest)


async def live_workers(redis: Redis) -> list[str]:
    """The ids of the workers that beat within the last WORKER_EXPIRES_SECONDS (those gone longer than
    a minute leave the list as it is read)."""
    now = time.time()
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zremrangebyscore(keys.WORKERS, 0, (now - 60) * 1000)
        pipe.zrangebyscore(keys.WORKERS, (now - keys.WORKER_EXPIRES_SECONDS) * 1000, "+inf")
        _, live = await pipe.execute()
    return [worker_id.decode() for worker_id in live]
